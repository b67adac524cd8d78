"""hf-vla: tiny random SmolVLM (Idefics3) and PaliGemma checkpoints written with save_pretrained, loaded
offline through the policy with their own processors; both heads' shapes and exact log-probs, LoRA and
the published buffer, one PPO update through the real learner and its checkpoint round trip, the
refusals of a directory that cannot load, and trust_remote_code (real torch, real transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dvla.spec import JobSpec
from dvlad.lanes.learner import Learner, LearnerConfig
from dvlad.lanes.trajectory import SegmentShape, segment_layout
from dvlad.policies import ObsBatch, flatten_parameters, make_policy
from dvlad.policies.checkpoint import load_checkpoint
from dvlad.policies.hf_vla import HFVLA
from dvlad.policies.random_vlm import FAMILIES, SPECIALS, VOCAB, write_checkpoint, write_remote_code_checkpoint
from dvlad.runtime.job import run_job
from dvlad.spaces import ACTION_DIM, EnvSpec
from tests.policy_checks import act_evaluate_value

REACH = EnvSpec(cameras={"image": (64, 64)}, proprio_dim=4, max_episode_steps=40, aux_dim=2)
"""reach's shapes (dvlad/envs/reach.py), without starting MuJoCo."""
TWO_CAMERAS = EnvSpec(cameras={"agentview": (48, 64), "wrist": (32, 32)}, proprio_dim=5, max_episode_steps=10)
LORA = {"r": 4, "alpha": 8}
HEADS = ("parallel", "tokens")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {family: write_checkpoint(root / family, family) for family in FAMILIES}


def build(directory: Path, env: EnvSpec = REACH, seed: int = 0, **args) -> HFVLA:
    torch.manual_seed(seed)
    policy = make_policy("hf-vla", env, action_chunk=2, pretrained=str(directory), **args)
    assert isinstance(policy, HFVLA)
    return policy


def make_obs(policy: HFVLA, env: EnvSpec = REACH, batch: int = 3, seed: int = 0) -> ObsBatch:
    g = torch.Generator().manual_seed(seed)
    words = ["touch the red cube", "touch the blue cube", ""]
    return ObsBatch(
        images={name: torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=g)
                for name, (h, w) in env.cameras.items()},
        proprio=torch.randn(batch, env.proprio_dim, generator=g),
        instruction=policy.tokenize([words[i % len(words)] for i in range(batch)]),
    )


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_exact_logprobs(checkpoints: dict[str, Path], family: str, head: str) -> None:
    policy = build(checkpoints[family], head=head)
    _, ev = act_evaluate_value(policy, make_obs(policy), chunk=2, aux_dim=REACH.aux_dim)
    assert (ev.entropy > 0.9 * np.log(256)).all()  # a broad first policy over the bins


def test_tokens_head_uses_the_least_used_vocabulary_entries(checkpoints: dict[str, Path]) -> None:
    policy = build(checkpoints["idefics3"], head="tokens")
    assert policy.tokenize(["touch <image> the cube"]).tolist() == policy.tokenize(["touch the cube"]).tolist()
    ids = policy.action_ids.tolist()
    assert ids == list(range(VOCAB - 256, VOCAB))  # the tiny tokenizer's own words sit below them
    assert not set(ids) & set(policy.processor.tokenizer.all_special_ids)


def test_tokens_head_is_autoregressive(checkpoints: dict[str, Path]) -> None:
    """A token's log-prob depends on the tokens before it with the tokens head (not with the parallel
    head), and on none after it with either (causal)."""
    for head, depends in (("tokens", True), ("parallel", False)):
        policy = build(checkpoints["paligemma"], head=head)
        obs = make_obs(policy)
        tokens = torch.zeros(3, 2, ACTION_DIM, dtype=torch.long)
        first, last = tokens.clone(), tokens.clone()
        first[:, 0, 0], last[:, -1, -1] = 200, 200
        with torch.no_grad():
            base, a, b = (policy.evaluate(obs, t).logprob for t in (tokens, first, last))
        assert ((a[:, 1:] - base[:, 1:]).abs().max() > 1e-6) == depends, head
        torch.testing.assert_close(b[:, :-1], base[:, :-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_and_images_reach_the_policy_and_padding_does_not(checkpoints: dict[str, Path],
                                                                       family: str) -> None:
    policy = build(checkpoints[family], env=TWO_CAMERAS)
    obs = make_obs(policy, env=TWO_CAMERAS, batch=2)
    with torch.no_grad():
        value = policy.value(obs)
        shorter = policy.value(ObsBatch(obs.images, obs.proprio, obs.instruction[:, :6]))
        swapped = policy.value(ObsBatch(obs.images, obs.proprio, obs.instruction.flip(0)))
        wrist = {**obs.images, "wrist": obs.images["wrist"].flip(0)}
        other_wrist = policy.value(ObsBatch(wrist, obs.proprio, obs.instruction))
    torch.testing.assert_close(shorter, value, rtol=0, atol=1e-5)  # left padding: only distances matter
    assert (swapped - value).abs().min() > 1e-6  # the instruction is read …
    assert (other_wrist - value).abs().min() > 1e-6  # … and every camera


def test_bfloat16_runs_on_cpu(checkpoints: dict[str, Path]) -> None:
    policy = build(checkpoints["idefics3"], dtype="bfloat16", lora=LORA)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert flatten_parameters(policy).dtype == torch.bfloat16
    with torch.no_grad():
        out = policy.act(make_obs(policy))
    assert out.logprob.dtype == torch.float32 and torch.isfinite(out.logprob).all()


@pytest.mark.parametrize("head", HEADS)
def test_lora_publishes_adapters_and_heads_and_trains_them_only(checkpoints: dict[str, Path], head: str) -> None:
    policy = build(checkpoints["paligemma"], head=head, lora=LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable if n.startswith("vlm."))
    assert {"proprio.weight", "value_head.weight"} <= trainable
    flat = flatten_parameters(policy)
    total = sum(p.numel() for p in policy.parameters())
    assert flat.numel() == sum(p.numel() for p in policy.published_parameters()) < total / 2

    frozen_before = [p.detach().clone() for p in policy.parameters() if not p.requires_grad]
    obs = make_obs(policy)
    with torch.no_grad():
        tokens = policy.act(obs).tokens
        before = policy.evaluate(obs, tokens)
    optimizer = torch.optim.Adam(policy.published_parameters(), lr=1e-2)
    ev = policy.evaluate(obs, tokens)
    (-ev.logprob.mean() + ev.value.square().mean()).backward()
    optimizer.step()
    with torch.no_grad():
        after = policy.evaluate(obs, tokens)
    assert (after.logprob - before.logprob).abs().max() > 1e-3  # the step changed the policy …
    assert (after.value - before.value).abs().max() > 1e-3
    frozen_after = [p for p in policy.parameters() if not p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True))  # … not the backbone


def _spec(directory: Path, head: str) -> JobSpec:
    spec = JobSpec()
    spec.policy.name = "hf-vla"
    spec.policy.action_chunk = 2
    spec.policy.args = {"pretrained": str(directory), "head": head, "lora": LORA}
    spec.algo.update_epochs, spec.algo.minibatches, spec.algo.learning_rate = 1, 2, 1e-2
    spec.train.resume = False
    return spec


def _segments(env: EnvSpec, chunk: int, steps: int = 3, envs: int = 2) -> list[dict[str, np.ndarray]]:
    """Two env groups' segments as the actor writes them: random frames, tokens and rewards."""
    layout = segment_layout(env, SegmentShape(steps, envs, chunk, 16), 1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        seg = {k: np.zeros(v.shape[1:], v.dtype) for k, v in layout.items()}
        seg["image/image"][:] = rng.integers(0, 255, seg["image/image"].shape)
        seg["instruction"][:, :, :3] = rng.integers(len(SPECIALS), VOCAB // 2, seg["instruction"][:, :, :3].shape) + 1
        seg["tokens"][:] = rng.integers(0, 256, seg["tokens"].shape)
        seg["logprob"][:] = -5.5
        seg["reward"][:] = rng.normal(size=seg["reward"].shape)
        seg["valid"][:] = True
        seg["env_steps"][:] = chunk
        out.append(seg)
    return out


@pytest.mark.parametrize("head", ["parallel", pytest.param("tokens", marks=pytest.mark.slow)])
def test_ppo_update_through_the_learner_and_checkpoint_round_trip(checkpoints: dict[str, Path], tmp_path: Path,
                                                                  head: str) -> None:
    spec = _spec(checkpoints["idefics3"], head)
    learner = Learner(LearnerConfig(spec, REACH, str(tmp_path)))
    before = learner.flat.clone()
    stats = learner.update(_segments(REACH, 2))
    assert learner.version == 1 and stats.samples == 2 * 3 * 2
    assert not torch.equal(before, learner.flat)  # the published buffer moved
    learner.save()

    spec.train.resume = True
    again = Learner(LearnerConfig(spec, REACH, str(tmp_path)))
    assert again.version == 1 and torch.equal(again.flat, learner.flat)
    obs = make_obs(learner.policy)  # type: ignore[arg-type]
    with torch.no_grad():
        a, b = learner.policy.act(obs, deterministic=True), again.policy.act(obs, deterministic=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprob, b.logprob) and torch.equal(a.value, b.value)


# -- directories that cannot load ------------------------------------------------------


def test_a_directory_that_cannot_load_is_one_clear_line(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs pretrained"):
        make_policy("hf-vla", REACH)
    with pytest.raises(ValueError, match="is not a directory"):
        build(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"has no config\.json"):
        build(tmp_path)
    (tmp_path / "config.json").write_text((checkpoints["idefics3"] / "config.json").read_text())
    with pytest.raises(ValueError, match=r"has no \*.safetensors weights"):
        build(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((checkpoints["idefics3"] / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="has no processor"):
        build(tmp_path)
    (tmp_path / "processor_config.json").write_text((checkpoints["idefics3"] / "processor_config.json").read_text())
    with pytest.raises(ValueError, match="has no tokenizer") as refused:
        build(tmp_path)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="head must be one of"):
        build(checkpoints["idefics3"], head="diffusion")


def test_a_text_only_checkpoint_is_refused_naming_its_model_type(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=64)).save_pretrained(tmp_path)
    for name in ("processor_config.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ValueError, match="model_type 'qwen2' is not an image-text-to-text model") as refused:
        build(tmp_path)
    assert "\n" not in str(refused.value)


def test_model_code_in_the_checkpoint_runs_only_when_the_job_allows_it(tmp_path: Path) -> None:
    directory = write_remote_code_checkpoint(tmp_path / "custom")
    with pytest.raises(ValueError, match="trust_remote_code must be true or false"):
        build(directory, trust_remote_code="false")
    with pytest.raises(ValueError, match=r"ships its own model code \(modeling_tiny_custom\.py\), which would run"):
        build(directory)
    policy = build(directory, trust_remote_code=True)
    assert type(policy.vlm).__name__ == "TinyCustomVLM"  # the checkpoint's own class
    with torch.no_grad():
        out = policy.act(make_obs(policy))
    assert torch.isfinite(out.logprob).all() and json.loads((directory / "config.json").read_text())["auto_map"]


@pytest.mark.slow
def test_job_trains_on_reach_through_the_lanes(checkpoints: dict[str, Path], small_spec, tmp_path: Path) -> None:
    """The whole engine: env workers, the actor and the learner process each load the checkpoint."""
    spec = small_spec(env__name="reach", env__args={"image_size": 32}, policy__name="hf-vla",
                      policy__args={"pretrained": str(checkpoints["idefics3"]), "lora": LORA},
                      policy__action_chunk=2, algo__aux_coef=1.0)
    spec.train.total_env_steps = 256
    result = run_job(spec, tmp_path, quiet=True)
    assert result["status"] == "succeeded", result
    assert result["env_steps"] >= 256 and result["version"] >= 1
    weights = load_checkpoint(tmp_path / "checkpoint.safetensors")[0]["policy.flat"]
    env = EnvSpec(cameras={"image": (32, 32)}, proprio_dim=4, max_episode_steps=40, aux_dim=2)
    policy = build(checkpoints["idefics3"], env=env, seed=spec.job.seed, lora=LORA)
    assert weights.numel() == flatten_parameters(policy).numel() < sum(p.numel() for p in policy.parameters())


@pytest.mark.slow  # 11 learner updates of a tiny VLM: 19 s on 2 shared cores
def test_bc_trains_the_tokens_head_on_expert_demonstrations(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """OpenVLA's recipe: cross-entropy of the demonstrated action tokens through the backbone's own head."""
    from dvla.metric_names import LOSS
    from dvlad.envs.reach_expert import record

    record(tmp_path / "reach.hdf5", episodes=6, seed=2, image_size=64)
    spec = _spec(checkpoints["paligemma"], "tokens")
    spec.algo.name, spec.algo.demonstrations = "bc", str(tmp_path / "reach.hdf5")
    spec.algo.learning_rate, spec.algo.minibatches = 3e-3, 1
    del spec.policy.args["lora"]  # full fine-tuning: the language-model head's action rows learn too
    learner = Learner(LearnerConfig(spec, REACH, str(tmp_path / "run")))
    first = learner.update(_segments(REACH, 2)).losses[LOSS]
    for _ in range(10):
        last = learner.update(_segments(REACH, 2)).losses[LOSS]
    assert last < 0.7 * first


def test_dvla_validate_checks_the_args_that_fail_late_or_decide_on_code() -> None:
    from dvla.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as refused:
        parse_spec('[policy]\nname = "hf-vla"\n[policy.args]\npretrained = "/m"\ntrust_remote_code = "false"\n'
                   'head = "token"\n')
    reasons = {issue.key: issue.reason for issue in refused.value.issues}
    assert reasons["policy.args.trust_remote_code"] == 'expected a boolean (true or false), got "false"'
    assert 'did you mean "tokens"' in reasons["policy.args.head"]
    parse_spec('[policy]\nname = "hf-vla"\n[policy.args]\npretrained = "/m"\ntrust_remote_code = true\n')
