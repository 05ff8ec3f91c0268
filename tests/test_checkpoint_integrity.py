"""Checkpoint integrity: bytes changed on disk are refused at resume, in one line.

A new user overwrote 4096 bytes of a checkpoint's array data with 0xff and the run resumed
silently with wrong but finite values. Checked here:
  * the fingerprint (``modular.train.fingerprint``) equals a NumPy reference, ignores the
    sharding, and sees changes a plain or position-weighted sum misses;
  * bytes overwritten inside array data (0xff, or one byte +1) stop a resume with one line
    naming the folder and the leaf; every file of the workdir is byte-identical afterwards;
    without the fingerprints the same checkpoint restores wrong and finite (the damage
    really lands in array data);
  * a truncated data file stops it with one line, not TensorStore's whole spec;
  * an untouched checkpoint restores bit-identically; one without fingerprints (an older
    version) still restores.

Array data lives in zstd frames inside ``state/ocdbt.process_0/d/``. Damage that breaks a
frame fails to decompress (refused like a truncated file); damage that still decodes (the
user's case) gives changed values. The tests keep the first damage, through the biggest
data files, that orbax alone restores to changed, finite values.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, run_with_devices
from modular.paths import flat_paths
from modular.train import checkpoint as ckpt_lib
from modular.train import fingerprint as fp_lib
from modular.train import loop

STEP = 10

# ---------------------------------------------------------------- the fingerprint itself


def _fmix_np(h):
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def _reference(x: np.ndarray) -> str:
  """The fingerprint of a float32/int32/uint32 array, in NumPy (uint32 wraps)."""
  w = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
  key = _fmix_np(np.arange(w.size, dtype=np.uint32) ^ np.uint32(0x9E3779B9))
  h = _fmix_np(w ^ key)
  a = int(h.sum(dtype=np.uint64) % 2**32)
  b = int((h * (key | np.uint32(1))).sum(dtype=np.uint64) % 2**32)
  return f"{a:08x}{b:08x}"


def test_fingerprint_equals_numpy_reference():
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(7, 33)).astype(np.float32),
          "step": np.int32(12), "rng": np.asarray(jax.random.PRNGKey(3))}
  got = fp_lib.fingerprints(jax.tree.map(jnp.asarray, tree))
  assert got == {k: _reference(np.asarray(v)) for k, v in tree.items()}
  assert fp_lib.fingerprints(tree) == got  # NumPy leaves too


def test_fingerprint_sees_changes_that_cancel_in_plain_sums():
  x = np.linspace(-1, 1, 64, dtype=np.float32)
  base = fp_lib.fingerprints({"x": x})["x"]
  signs = x.copy()
  signs[[3, 5]] = -signs[[3, 5]]  # two sign bits: +2^31 twice cancels mod 2^32, also weighted
  swapped = x.copy()
  swapped[[3, 4]] = swapped[[4, 3]]  # same sum, different positions
  one_ulp = x.view(np.uint32).copy()
  one_ulp[10] += 1
  for changed in (signs, swapped, one_ulp.view(np.float32)):
    assert fp_lib.fingerprints({"x": changed})["x"] != base


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int8, jnp.uint8, jnp.bool_])
def test_fingerprint_reads_every_bit_of_narrow_types(dtype):
  x = jnp.arange(12).reshape(3, 4).astype(dtype)
  y = x.at[1, 2].set(~x[1, 2] if dtype == jnp.bool_ else x[1, 2] + jnp.ones((), dtype))
  assert fp_lib.fingerprints({"x": x}) != fp_lib.fingerprints({"x": y})
  assert fp_lib.fingerprints({"x": x}) == fp_lib.fingerprints({"x": np.asarray(x)})


@pytest.mark.slow
def test_fingerprint_of_a_sharded_array_equals_the_unsharded_one():
  out = run_with_devices("""
      import json, jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from modular.train.fingerprint import fingerprints
      x = np.random.default_rng(1).normal(size=(16, 40, 6)).astype(np.float32)
      mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
      sharded = {"x": jax.device_put(x, NamedSharding(mesh, P("data", "model")))}
      repl = {"x": jax.device_put(x, NamedSharding(mesh, P()))}
      print(json.dumps({"sharded": fingerprints(sharded), "repl": fingerprints(repl),
                        "one": fingerprints({"x": x})}))
  """)
  assert out["sharded"] == out["repl"] == out["one"]


# ---------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A tiny run trained to step 10 (checkpoints 0 and 10) and its final state, once."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from modular.overrides import load_config_file
  cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "tiny")
  cfg.data.data_dir = data_dir
  cfg.train.progress = False
  cfg.train.steps = STEP
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  summary = loop.train(cfg, workdir)
  return cfg, workdir, jax.device_get(summary["state"])


def _copy(trained, tmp_path):
  cfg, workdir, state = trained
  dest = str(tmp_path / "run")
  shutil.copytree(workdir, dest)
  return cfg.copy_and_resolve_references(), dest, state


def _snapshot(workdir):
  """sha256 of every file (the lock file aside: the lock's holder writes it)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if f != ".lock":
        path = os.path.join(root, f)
        with open(path, "rb") as fh:
          out[os.path.relpath(path, workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _data_files(workdir):
  files = glob.glob(os.path.join(workdir, "checkpoints", str(STEP), "state",
                                 "ocdbt.process_0", "d", "*"))
  return sorted(files, key=os.path.getsize, reverse=True)


def _restore_unchecked(abstract, workdir):
  """The checkpoint at STEP through orbax alone: no shape, finite or fingerprint check."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    out = manager.restore(STEP, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  finally:
    manager.close()
  return flat_paths(jax.device_get(out.state))


def _damage(abstract, workdir, clean, how: str) -> list[str]:
  """Overwrites bytes of a data file so that the checkpoint decodes, to changed values.

  Tries offsets through the biggest data files: damage that breaks a zstd frame fails to
  decompress (already refused, see the truncation test) and is undone; the first damage
  that orbax restores without error is kept.

  Returns:
    The leaves orbax alone restores changed (all finite): the damage is in array data.
  """
  for path in _data_files(workdir)[:3]:
    with open(path, "rb") as f:
      original = f.read()
    for at in (np.linspace(0.02, 0.98, 48) * len(original)).astype(int):
      with open(path, "r+b") as f:
        f.seek(at)
        if how == "0xff":  # the new user's damage
          f.write(b"\xff" * 4096)
        else:  # one byte + 1: a small change of one or a few values
          f.write(bytes([(original[at] + 1) % 256]))
      try:
        restored = _restore_unchecked(abstract, workdir)
      except Exception:  # pylint: disable=broad-except
        restored = None
      if restored is not None:
        changed = [k for k in clean if not np.array_equal(clean[k], restored[k])]
        if changed and all(np.isfinite(restored[k]).all() for k in changed):
          return changed
      with open(path, "wb") as f:
        f.write(original)
  raise AssertionError("no damage that decodes to finite values was found")


def _one_line(message: str, workdir: str):
  assert "\n" not in message, message
  assert len(message) < 700, message
  assert os.path.join(workdir, "checkpoints", str(STEP)) in message
  assert "Nothing was deleted" in message


@pytest.mark.slow
@pytest.mark.parametrize("how", ["0xff", "plus1"])
def test_overwritten_array_bytes_stop_the_resume(trained, tmp_path, how):
  cfg, workdir, state = _copy(trained, tmp_path)
  # Not vacuous: orbax alone restores changed, finite values (what the user saw).
  changed = _damage(loop.setup(cfg).abstract_state, workdir, flat_paths(state), how)
  before = _snapshot(workdir)
  cfg.train.steps = 20
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    loop.train(cfg, workdir)
  message = str(info.value)
  _one_line(message, workdir)
  assert f"(first at {changed[0]})" in message, (message, changed)
  assert "integrity fingerprint" in message
  assert _snapshot(workdir) == before
  if any(k.startswith("params/") for k in changed):  # analysis reads the params only
    with pytest.raises(ckpt_lib.CheckpointError, match="integrity fingerprint"):
      ckpt_lib.load_for_analysis(workdir, STEP)


@pytest.mark.slow
def test_a_truncated_data_file_gives_one_line(trained, tmp_path):
  cfg, workdir, _ = _copy(trained, tmp_path)
  path = _data_files(workdir)[0]
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  before = _snapshot(workdir)
  cfg.train.steps = 20
  with pytest.raises(ckpt_lib.CheckpointError, match="could not be restored") as info:
    loop.train(cfg, workdir)
  _one_line(str(info.value), workdir)
  assert _snapshot(workdir) == before


def test_cause_keeps_the_innermost_first_line_only():
  long = "Error reading x: " + "y" * 1000 + "\n{\n  'spec': 1,\n}"
  assert ckpt_lib._cause(ValueError(long)) == "ValueError: " + long[:300] + "..."
  assert ckpt_lib._cause(ValueError("short\nmore")) == "ValueError: short"
  assert ckpt_lib._cause(ValueError("")) == "ValueError: "
  try:
    try:
      raise ValueError("DATA_LOSS: file too short\nspec...")
    except ValueError as inner:
      raise RuntimeError("Encountered error while reading\n{spec}") from inner
  except RuntimeError as outer:
    assert ckpt_lib._cause(outer) == "ValueError: DATA_LOSS: file too short"


@pytest.mark.slow
def test_an_untouched_checkpoint_restores_bit_identically(trained, tmp_path):
  cfg, workdir, state = _copy(trained, tmp_path)
  with open(os.path.join(workdir, "checkpoints", str(STEP), "meta", "metadata")) as f:
    meta = json.load(f)
  assert meta["fingerprint_format"] == ckpt_lib.FINGERPRINT_FORMAT
  assert set(meta["fingerprints"]) == set(flat_paths(state))
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    restored, _, meta = ckpt.restore(STEP, loop.setup(cfg).abstract_state)
  finally:
    ckpt.close()
  assert meta == {"step": STEP, "tasks": meta["tasks"]}  # the fingerprints stay inside
  want, got = flat_paths(state), flat_paths(jax.device_get(restored))
  assert want.keys() == got.keys()
  for k in want:
    assert np.asarray(want[k]).tobytes() == np.asarray(got[k]).tobytes(), k


@pytest.mark.slow
def test_a_checkpoint_without_fingerprints_still_restores(trained, tmp_path):
  """An older version saved no fingerprints: nothing to check, the resume goes on."""
  cfg, workdir, state = _copy(trained, tmp_path)
  for step in (0, STEP):
    path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    del meta["fingerprints"], meta["fingerprint_format"]
    with open(path, "w") as f:
      json.dump(meta, f)
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    restored, _, _ = ckpt.restore(STEP, loop.setup(cfg).abstract_state)
  finally:
    ckpt.close()
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(state), jax.tree.leaves(jax.device_get(restored))))
  cfg.train.steps = 15
  summary = loop.train(cfg, workdir)
  assert summary["start_step"] == STEP and summary["end_step"] == 15


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["negative", "huge", "step", "garbage"])
def test_a_damaged_data_iterator_state_stops_the_resume(trained, tmp_path, edit):
  """The data state is plain JSON outside the fingerprint: it is checked for consistency.

  A new user set one position to -7 (IndexError traceback after config.json had been
  rewritten) or to 10**12 (trained silently on another data order).
  """
  cfg, workdir, _ = _copy(trained, tmp_path)
  path = glob.glob(os.path.join(workdir, "checkpoints", str(STEP), "data", "*.json"))[0]
  with open(path) as f:
    data = json.load(f)
  if edit == "negative":
    data["positions"][0] = -7
  elif edit == "huge":
    data["positions"][0] = 10 ** 12
  elif edit == "step":  # positions still sum to a whole number of batches, of another step
    data["step"] = 2 * STEP
    data["positions"] = [2 * p for p in data["positions"]]
  else:
    data["positions"] = "abc"
  with open(path, "w") as f:
    json.dump(data, f)
  before = _snapshot(workdir)
  cfg.train.steps = 20
  with pytest.raises(ckpt_lib.CheckpointError, match="data-iterator state is damaged") as info:
    loop.train(cfg, workdir)
  message = str(info.value)
  assert "\n" not in message and os.path.join(workdir, "checkpoints", str(STEP)) in message
  assert _snapshot(workdir) == before
