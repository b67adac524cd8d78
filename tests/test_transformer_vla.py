"""transformer-vla: shapes, exact log-probs, LoRA and the published buffer, local checkpoints,
preset sizes, and a real job on reach through the lanes (real torch, real transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvlad.policies import ObsBatch, Policy, flatten_parameters, make_policy
from dvlad.policies.checkpoint import load_checkpoint
from dvlad.policies.transformer_vla import TransformerVLA
from dvlad.runtime.job import run_job
from dvlad.spaces import EnvSpec
from tests.policy_checks import act_evaluate_value

REACH = EnvSpec(cameras={"image": (64, 64)}, proprio_dim=4, max_episode_steps=40, aux_dim=2)
"""reach's shapes (dvlad/envs/reach.py), without starting MuJoCo."""
LORA = {"r": 4, "alpha": 8}


def build(seed: int = 0, **args) -> TransformerVLA:
    torch.manual_seed(seed)
    policy = make_policy("transformer-vla", REACH, action_chunk=2, **{"preset": "tiny", **args})
    assert isinstance(policy, TransformerVLA)
    return policy


def make_obs(policy: Policy, batch: int = 3, seed: int = 0) -> ObsBatch:
    g = torch.Generator().manual_seed(seed)
    words = ["touch the red cube", "touch the blue cube", ""]
    return ObsBatch(
        images={"image": torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, generator=g)},
        proprio=torch.randn(batch, REACH.proprio_dim, generator=g),
        instruction=policy.tokenize([words[i % len(words)] for i in range(batch)]),
    )


def test_shapes_and_exact_logprobs() -> None:
    policy = build()
    _, ev = act_evaluate_value(policy, make_obs(policy), chunk=2, aux_dim=REACH.aux_dim)
    assert torch.isclose(ev.entropy, torch.full_like(ev.entropy, 256.0).log(), atol=0.05).all()  # ~uniform


def test_instruction_padding_is_masked() -> None:
    """Padding the instruction further (more masked positions) changes nothing."""
    policy = build()
    obs = make_obs(policy, batch=2)
    short = ObsBatch(obs.images, obs.proprio, obs.instruction[:, :8])
    with torch.no_grad():
        torch.testing.assert_close(policy.value(short), policy.value(obs))


def test_bfloat16_runs_on_cpu() -> None:
    policy = build(dtype="bfloat16", lora=LORA)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert flatten_parameters(policy).dtype == torch.bfloat16
    with torch.no_grad():
        out = policy.act(make_obs(policy))
    assert out.logprob.dtype == torch.float32 and torch.isfinite(out.logprob).all()


def test_lora_trains_adapters_vision_and_heads_only() -> None:
    policy = build(lora=LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    assert all(n.startswith("trunk.") and "lora_" not in n for n in frozen)
    assert {n for n in trainable if n.startswith("trunk.")} and all("lora_" in n for n in trainable
                                                                   if n.startswith("trunk."))
    assert any(n.startswith("vision.") for n in trainable) and "action_head.weight" in trainable
    flat = flatten_parameters(policy)
    total = sum(p.numel() for p in policy.parameters())
    assert flat.numel() == sum(p.numel() for p in policy.published_parameters()) < total / 2

    before_frozen = [p.detach().clone() for p in policy.parameters() if not p.requires_grad]
    obs = make_obs(policy)
    with torch.no_grad():
        before = policy.act(obs, deterministic=True)
    optimizer = torch.optim.Adam(policy.published_parameters(), lr=1e-2)
    ev = policy.evaluate(obs, before.tokens)
    (-ev.logprob.mean() + ev.value.square().mean()).backward()
    optimizer.step()
    with torch.no_grad():
        after = policy.evaluate(obs, before.tokens)
    assert (after.logprob - before.logprob).abs().max() > 1e-3  # the step changed the policy …
    assert (after.value - before.value).abs().max() > 1e-3
    frozen_after = [p for p in policy.parameters() if not p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, frozen_after, strict=True))  # … not the base


def test_published_buffer_alone_makes_equal_policies() -> None:
    """Learner and actor build the frozen base from the same seed; only the flat buffer travels."""
    learner, actor = build(seed=7, lora=LORA), build(seed=7, lora=LORA)
    learner_flat, actor_flat = flatten_parameters(learner), flatten_parameters(actor)
    obs = make_obs(learner)
    optimizer = torch.optim.Adam(learner.published_parameters(), lr=1e-2)
    (-learner.evaluate(obs, learner.act(obs).tokens).logprob.mean()).backward()
    optimizer.step()
    actor_flat.copy_(learner_flat)
    with torch.no_grad():
        a, b = learner.act(obs, deterministic=True), actor.act(obs, deterministic=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprob, b.logprob) and torch.equal(a.value, b.value)


def test_pretrained_trunk_loads_local_safetensors(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128)
    torch.manual_seed(3)
    saved = Qwen2ForCausalLM(config)  # a published checkpoint has the LM head; the trunk drops it
    saved.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    policy = build(pretrained=str(tmp_path), preset=None, lora=LORA)
    loaded = policy.trunk.layers[1].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(loaded, saved.model.layers[1].self_attn.q_proj.weight, rtol=0, atol=0)
    assert policy.text_tokenizer.vocab_size == 300
    with torch.no_grad():
        assert torch.isfinite(policy.value(make_obs(policy))).all()


def test_bad_pretrained_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        build(pretrained=str(tmp_path / "missing"), preset=None)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="safetensors"):
        build(pretrained=str(tmp_path), preset=None)
    with pytest.raises(ValueError, match="not both"):
        build(pretrained=str(tmp_path), preset="tiny")
    with pytest.raises(ValueError, match="unknown trunk preset"):
        build(preset="huge")


@pytest.mark.parametrize(("preset", "low", "high"), [("tiny", 1e6, 3e6), ("50m", 45e6, 60e6), ("1b", 0.9e9, 1.3e9)])
def test_preset_sizes(preset: str, low: float, high: float) -> None:
    with torch.device("meta"):  # no memory, no init time
        policy = TransformerVLA(REACH, action_chunk=8, preset=preset)
    assert low <= sum(p.numel() for p in policy.parameters()) <= high


@pytest.mark.slow
def test_job_trains_on_reach_through_the_lanes(small_spec, tmp_path: Path) -> None:
    spec = small_spec(env__name="reach", env__args={"image_size": 32}, policy__name="transformer-vla",
                      policy__args={"preset": "tiny", "lora": LORA}, policy__action_chunk=2, algo__aux_coef=1.0)
    spec.train.total_env_steps = 256
    result = run_job(spec, tmp_path, quiet=True)
    assert result["status"] == "succeeded", result
    assert result["env_steps"] >= 256 and result["version"] >= 1
    weights = load_checkpoint(tmp_path / "checkpoint.safetensors")[0]["policy.flat"]
    torch.manual_seed(spec.job.seed)  # the frozen base, as every process of the job built it
    policy = make_policy("transformer-vla", EnvSpec(cameras={"image": (32, 32)}, proprio_dim=4, max_episode_steps=40,
                                                    aux_dim=2), action_chunk=2, **spec.policy.args)
    total = sum(p.numel() for p in policy.parameters())
    assert weights.numel() == flatten_parameters(policy).numel() < total  # the published part only
