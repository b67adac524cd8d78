"""Policy layer: TinyVLA shapes and consistency, tokenizers, flat weights, factory, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from dvlad.policies import ObsBatch, Policy, flatten_parameters, make_policy
from dvlad.policies import checkpoint as ckpt
from dvlad.policies.action_tokens import ActionTokenizer
from dvlad.policies.checkpoint import load_checkpoint, save_checkpoint
from dvlad.policies.text import WordTokenizer
from dvlad.policies.tiny_vla import TinyVLA
from dvlad.spaces import ACTION_DIM, EnvSpec

SPEC = EnvSpec(cameras={"agentview": (32, 32), "wrist.cam": (24, 40)}, proprio_dim=5, max_episode_steps=10)
SMALL = {"d_model": 32, "layers": 1, "heads": 2, "patch_grid": 4, "bins": 32}


def make_obs(policy: Policy, batch: int = 4, seed: int = 0) -> ObsBatch:
    g = torch.Generator().manual_seed(seed)
    images = {
        name: torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=g)
        for name, (h, w) in SPEC.cameras.items()
    }
    words = ["pick up the red block", "open the drawer", "", "put the bowl on the plate"]
    instruction = policy.tokenize([words[i % len(words)] for i in range(batch)])
    return ObsBatch(
        images=images, proprio=torch.randn(batch, SPEC.proprio_dim, generator=g), instruction=instruction
    )


@pytest.fixture
def policy() -> TinyVLA:
    torch.manual_seed(0)
    return TinyVLA(SPEC, action_chunk=2, **SMALL)


@pytest.mark.parametrize("chunk", [1, 2])
def test_shapes_and_dtypes(chunk: int) -> None:
    torch.manual_seed(0)
    p = TinyVLA(SPEC, action_chunk=chunk, **SMALL)
    obs = make_obs(p, batch=3)
    with torch.no_grad():
        out = p.act(obs)
        ev = p.evaluate(obs, out.tokens)
        value = p.value(obs)
    assert out.tokens.shape == (3, chunk, ACTION_DIM) and out.tokens.dtype == torch.int64
    assert out.actions.shape == (3, chunk, ACTION_DIM) and out.actions.dtype == torch.float32
    assert out.actions.abs().max() <= 1.0
    assert out.tokens.min() >= 0 and out.tokens.max() < SMALL["bins"]
    for t in (out.value, ev.value, value):
        assert t.shape == (3,) and t.dtype == torch.float32
    for t in (out.logprob, ev.logprob, ev.entropy):  # one per action token
        assert t.shape == (3, chunk * ACTION_DIM) and t.dtype == torch.float32
    # A broad first policy (a wide Gaussian over the bins): each token's entropy near its maximum.
    assert torch.all(ev.entropy > 0.9 * torch.log(torch.tensor(float(SMALL["bins"]))))
    torch.testing.assert_close(value, out.value)


def test_act_logprob_matches_evaluate(policy: TinyVLA) -> None:
    obs = make_obs(policy)
    with torch.no_grad():
        out = policy.act(obs)
    policy.eval()  # the actor may switch to eval mode; the log-probs must not move
    with torch.no_grad():
        again = policy.evaluate(obs, out.tokens)
    policy.train()
    ev = policy.evaluate(obs, out.tokens)  # with grad, as the learner runs it
    torch.testing.assert_close(ev.logprob.detach(), out.logprob, rtol=0, atol=1e-5)
    torch.testing.assert_close(again.logprob, out.logprob, rtol=0, atol=1e-5)


def test_deterministic_act_is_argmax(policy: TinyVLA) -> None:
    obs = make_obs(policy)
    with torch.no_grad():
        policy.action_head.weight.normal_()  # a peaked distribution, so argmax is meaningful
        det = policy.act(obs, deterministic=True)
        logp = policy._heads(obs)[0]
        sampled = torch.stack([policy.act(obs).logprob.sum(1) for _ in range(5)])
    assert torch.equal(det.tokens, logp.argmax(dim=-1))
    assert torch.all(det.logprob.sum(1) >= sampled.max(dim=0).values - 1e-4)


def test_word_tokenizer_padding_and_case() -> None:
    tok = WordTokenizer(vocab_size=64, max_tokens=4)
    ids = tok(["Pick UP, the-block!", "", "a b c d e f"])
    assert ids.shape == (3, 4) and ids.dtype == torch.int64
    assert torch.equal(ids[0], tok(["pick up the block"])[0])
    assert torch.all(ids[0] > 0) and torch.all(ids[0] < 64)
    assert torch.all(ids[1] == 0)  # empty instruction: all padding
    assert torch.all(ids[2] > 0)  # truncated to max_tokens
    assert torch.equal(tok(["a b"])[0, 2:], torch.zeros(2, dtype=torch.long))


def test_word_tokenizer_is_stable_across_processes() -> None:
    text = "put the black bowl on the plate"
    here = WordTokenizer()([text])[0].tolist()
    code = f"from dvlad.policies.text import WordTokenizer; print(WordTokenizer()([{text!r}])[0].tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash salt than ours
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(here)


def test_action_tokenizer_round_trip() -> None:
    tok = ActionTokenizer(bins=256)
    x = torch.linspace(-1.0, 1.0, 10_001)
    tokens = tok.encode(x)
    assert tokens.dtype == torch.int64 and tokens.min() == 0 and tokens.max() == 255
    assert (tok.decode(tokens) - x).abs().max() <= tok.width / 2 + 1e-6
    assert torch.equal(tok.encode(torch.tensor([-5.0, 5.0])), torch.tensor([0, 255]))
    assert tok.decode(tok.encode(torch.tensor([0.3]))).dtype == torch.float32


def test_flat_buffer_swaps_weights_and_still_trains(policy: TinyVLA) -> None:
    obs = make_obs(policy)
    flat = flatten_parameters(policy)
    assert flat.numel() == sum(p.numel() for p in policy.parameters())
    with torch.no_grad():
        before = policy.act(obs, deterministic=True)
        flat.copy_(torch.randn_like(flat) * 0.1)  # a new "version" copied in whole
        after = policy.act(obs, deterministic=True)
    assert not torch.allclose(before.value, after.value)

    target = torch.randint(0, SMALL["bins"], (obs.proprio.shape[0], 2, ACTION_DIM))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    start = policy.evaluate(obs, target).logprob.mean().item()
    snapshot = flat.clone()
    for _ in range(5):
        loss = -policy.evaluate(obs, target).logprob.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = policy.evaluate(obs, target).logprob.mean().item()
    assert end > start + 0.3  # mean log-prob per token
    assert not torch.equal(flat, snapshot)  # the optimizer wrote through to the flat buffer


def test_make_policy_builtin_and_factory_string(monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_policy("tiny-vla", SPEC, action_chunk=2, **SMALL)
    assert isinstance(p, TinyVLA) and p.action_chunk == 2
    q = make_policy("dvlad.policies.tiny_vla:TinyVLA", SPEC, action_chunk=3, **SMALL)
    assert isinstance(q, TinyVLA) and q.action_chunk == 3

    module = types.ModuleType("dvla_test_factories")
    module.not_a_policy = lambda env_spec, action_chunk=1, **args: object()  # type: ignore[attr-defined]
    module.constant = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dvla_test_factories", module)
    with pytest.raises(TypeError, match="not a Policy"):
        make_policy("dvla_test_factories:not_a_policy", SPEC)
    with pytest.raises(TypeError, match="not callable"):
        make_policy("dvla_test_factories:constant", SPEC)
    with pytest.raises(ValueError, match="tiny-vla"):
        make_policy("no-such-policy", SPEC)
    with pytest.raises(ValueError, match="cannot import"):
        make_policy("no_such_module_xyz:f", SPEC)
    with pytest.raises(ValueError, match="no policy factory"):
        make_policy("dvla_test_factories:missing", SPEC)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    tensors = {
        "flat": torch.randn(100),
        "step": torch.tensor([7], dtype=torch.int64),
        "exp_avg": torch.randn(3, 4).t(),
    }  # non-contiguous on purpose
    meta = {"version": "12", "spec": '{"policy": "tiny-vla"}'}
    path = tmp_path / "ckpt" / "last.safetensors"
    save_checkpoint(path, tensors, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    with pytest.raises(TypeError):
        save_checkpoint(path, tensors, {"version": 12})  # type: ignore[dict-item]


def test_checkpoint_replaced_whole_and_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"a": torch.zeros(3), "old": torch.ones(2)}, {"version": "1"})
    save_checkpoint(path, {"a": torch.ones(3)}, {"version": "2"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"version": "2"} and set(loaded) == {"a"} and torch.equal(loaded["a"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["last.safetensors"]

    def crash(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": torch.full((3,), 9.0)}, {"version": "3"})
    loaded, meta = load_checkpoint(path)  # the old checkpoint is intact
    assert meta == {"version": "2"} and torch.equal(loaded["a"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["last.safetensors"]


def test_action_head_shares_learning_between_neighbouring_bins():
    """Raising one bin's log-prob also raises its neighbours' (the Gaussian part), so a
    direction is learned from a few samples rather than bin by bin."""
    torch.manual_seed(0)
    policy = TinyVLA(SPEC, **SMALL)
    obs = make_obs(policy, batch=1)
    tokens = torch.full((1, 1, ACTION_DIM), 25, dtype=torch.long)
    before = policy._heads(obs)[0][0, 0, 0].exp()
    opt = torch.optim.SGD(policy.parameters(), lr=0.01)
    (-policy.evaluate(obs, tokens).logprob.sum()).backward()
    opt.step()
    after = policy._heads(obs)[0][0, 0, 0].exp()
    assert after[22] > before[22] and after[28] > before[28]  # neighbours, never sampled
    assert after[3] < before[3]  # the far side loses mass
