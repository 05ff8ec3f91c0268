"""Writes the multi-task methods' golden values from the peers (bench extra only).

Run from the repository root (takes ~20 s on 2 cores)::

  PYTHONPATH=$PWD python tests/golden/mtl/make_golden.py

Needs ``torch==2.13.0``, ``torchjd==0.18.0`` (extras ``cagrad``, ``nash_mtl``,
``quadprog_projector``, ``fairgrad``) and ``libmtl==1.1.5`` (imported through
``bench/_libmtl_compat.py``). It never imports ``modular``: the values are the peers'
alone, plus NumPy references written here from the papers for the methods no
installable peer has (MoCo, DB-MTL, STCH, FAMO).

Inputs (``inputs.json``): Jacobians ``J`` ``[T, n]`` for T = 2, 3, 5 (conflicting,
unequal norms spanning 100x, aligned), a sequence of four ``[3, 6]`` Jacobians with
losses for the stateful methods, and a loss sequence for the loss weightings. Outputs:
``torchjd.json`` (the aggregated vector ``J^T w`` per aggregator and case), ``libmtl.json``
(the shared parameter's gradient after LibMTL's ``backward`` on linear losses
``L_t(x) = c_t + <J_t, x>`` at ``x = 0``, so that its gradient is exactly ``J``), and
``numpy.json``. Random methods store the random numbers the peer drew (PCGrad's and
GradVac's permutations, GradDrop's uniforms, Random's normals), so that the tests feed
the same numbers to ours.

References:
  Quinton & Rey 2024 (TorchJD); Lin & Zhang 2023, "LibMTL" (JMLR); the method papers
  cited in each NumPy reference below.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _r(x) -> list:
  return np.round(np.asarray(x, np.float64), 10).tolist()


def inputs() -> dict:
  """The fixed inputs (deterministic; also written to ``inputs.json``)."""
  rng = np.random.default_rng(20240601)
  cases = {}
  base = rng.normal(size=(2, 6))
  base[1] = -0.6 * base[0] + 0.5 * rng.normal(size=6)                 # cos < 0
  cases["t2_conflict"] = base
  cases["t3_unequal"] = rng.normal(size=(3, 7)) * np.array([[0.1], [1.0], [10.0]])
  cases["t5_mixed"] = rng.normal(size=(5, 8)) * rng.uniform(0.5, 2.0, size=(5, 1))
  shared = rng.normal(size=6)
  cases["t3_aligned"] = shared + 0.3 * rng.normal(size=(3, 6))
  seq = [rng.normal(size=(3, 6)) * np.array([[0.5], [1.0], [2.0]]) for _ in range(4)]
  seq_losses = [rng.uniform(0.5, 2.0, size=3) for _ in range(4)]
  losses = [[2.0, 1.0, 0.5], [1.8, 0.95, 0.6], [1.5, 0.9, 0.55], [1.2, 0.92, 0.4]]
  return {"cases": {k: _r(v) for k, v in cases.items()},
          "seq": [_r(j) for j in seq], "seq_losses": [_r(l) for l in seq_losses],
          "losses": losses}


# ------------------------------------------------------------------------------- TorchJD
def torchjd_goldens(inp: dict) -> dict:
  """TorchJD 0.18.0's aggregators on the inputs: ``{aggregator: {case: [n]}}``."""
  import torch
  import torchjd.aggregation as A
  torch.set_default_dtype(torch.float64)
  cases = {k: torch.tensor(v) for k, v in inp["cases"].items()}
  out: dict = {}

  def per_case(name, make, cases_=cases):
    out[name] = {k: _r(make(J.shape[0])(J).detach().numpy()) for k, J in cases_.items()}

  per_case("mean", lambda t: A.Mean())
  per_case("sum", lambda t: A.Sum())
  per_case("upgrad", lambda t: A.UPGrad())
  per_case("dualproj", lambda t: A.DualProj())
  per_case("config", lambda t: A.ConFIG())
  per_case("imtl_g", lambda t: A.IMTLG())
  per_case("aligned_mtl", lambda t: A.AlignedMTL())
  per_case("mgda_default", lambda t: A.MGDA())                       # early stop at 1e-3
  per_case("mgda_exact", lambda t: A.MGDA(epsilon=1e-14, max_iters=20000))
  per_case("cagrad", lambda t: A.CAGrad(c=0.4))
  per_case("fairgrad_a1", lambda t: A.FairGrad(alpha=1.0))
  per_case("fairgrad_a2", lambda t: A.FairGrad(alpha=2.0))
  per_case("nashmtl", lambda t: A.NashMTL(n_tasks=t, max_norm=0.0))
  per_case("constant", lambda t: A.Constant(torch.linspace(0.5, 1.5, t)))
  big = {k: v for k, v in cases.items() if v.shape[0] >= 3}
  per_case("krum_f0", lambda t: A.Krum(n_byzantine=0, n_selected=1), big)
  per_case("krum_f1_s2", lambda t: A.Krum(n_byzantine=1, n_selected=2),
           {k: v for k, v in big.items() if v.shape[0] >= 4})
  per_case("trimmed_mean_1", lambda t: A.TrimmedMean(trim_number=1), big)

  # Random methods: replay the seed to record what the peer drew.
  out["pcgrad"], out["pcgrad_orders"] = {}, {}
  out["graddrop"], out["graddrop_u"] = {}, {}
  out["random"], out["random_z"] = {}, {}
  for k, J in cases.items():
    t = J.shape[0]
    torch.manual_seed(0)
    perms = [torch.randperm(t).tolist() for _ in range(t)]
    out["pcgrad_orders"][k] = [[j for j in p if j != i] for i, p in enumerate(perms)]
    torch.manual_seed(0)
    out["pcgrad"][k] = _r(A.PCGrad()(J).numpy())
    torch.manual_seed(1)
    out["graddrop_u"][k] = _r(torch.rand(J.shape[1]).numpy())
    torch.manual_seed(1)
    out["graddrop"][k] = _r(A.GradDrop()(J).numpy())
    torch.manual_seed(2)
    out["random_z"][k] = _r(torch.randn(t).numpy())
    torch.manual_seed(2)
    out["random"][k] = _r(A.Random()(J).numpy())

  # Stateful methods on the sequence: one output per step.
  seq = [torch.tensor(j) for j in inp["seq"]]

  def run_seq(name, agg, matrix_of=None):
    res = []
    for J in seq:
      res.append(_r(agg(J if matrix_of is None else matrix_of(J)).detach().numpy()))
    out[name] = res

  torch.manual_seed(3)
  gv_orders = []
  for _ in seq:
    step = []
    for i in range(3):
      others = [j for j in range(3) if j != i]
      step.append([others[p] for p in torch.randperm(2).tolist()])
    gv_orders.append(step)
  out["gradvac_orders"] = gv_orders
  torch.manual_seed(3)
  run_seq("gradvac", A.GradVac(beta=0.5))
  run_seq("excess_mtl", A.ExcessMTL(robust_step_size=1.0))
  run_seq("excess_mtl_warmup2", A.ExcessMTL(robust_step_size=0.5, n_warmup_steps=2))
  # MoDo / SDMGrad / CR-MOGM / PCD are weightings of a T x T matrix: we feed J J^T
  # (one batch) and record the weights.
  gram = lambda J: J @ J.T
  run_seq("modo_weights", A.MoDoWeighting(gamma=0.1, rho=0.1), gram)
  run_seq("sdmgrad_weights", A.SDMGradWeighting(), gram)
  run_seq("cr_mogm_imtl_g_weights", A.CRMOGMWeighting(A.IMTLGWeighting(), alpha=0.9), gram)
  run_seq("pcd_weights", A.PCDWeighting(tau=0.02, beta=0.999), gram)
  run_seq("pcd_weights_tau02", A.PCDWeighting(tau=0.2, beta=0.9), gram)
  return out


# -------------------------------------------------------------------------------- LibMTL
def libmtl_goldens(inp: dict) -> dict:
  """LibMTL 1.1.5's weightings on linear losses: ``{method: {case: grad [n]}}``."""
  import random

  import torch
  sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "bench"))
  from _libmtl_compat import import_libmtl
  import_libmtl()
  import LibMTL.weighting as W
  torch.set_default_dtype(torch.float32)

  def run(cls, J, c, kwargs, epoch=0, buffer=None, setup=None):
    J = torch.tensor(np.asarray(J), dtype=torch.float32)
    t, n = J.shape

    class Harness(cls):
      def __init__(self):
        super().__init__()
        self.task_num, self.device, self.rep_grad = t, "cpu", False
        self.x = torch.nn.Parameter(torch.zeros(n))
        self.epoch = epoch
        self.train_loss_buffer = buffer
        self.init_param()

      def get_share_params(self):
        return [self.x]

      def zero_grad_share_params(self):
        if self.x.grad is not None:
          self.x.grad.zero_()

    h = Harness()
    if setup:
      setup(h)
    losses = torch.tensor(c, dtype=torch.float32) + J @ h.x
    w = h.backward(losses, **kwargs)
    return h.x.grad.detach().numpy().copy(), np.asarray(w, np.float64), h

  out: dict = {}
  cases = inp["cases"]
  c_of = lambda J: [1.0 + 0.5 * i for i in range(len(J))]
  out["ew"] = {k: _r(run(W.EW, J, c_of(J), {})[0]) for k, J in cases.items()}
  out["mgda_none"] = {k: _r(run(W.MGDA, J, c_of(J), {"mgda_gn": "none"})[0])
                      for k, J in cases.items()}
  out["mgda_l2"] = {k: _r(run(W.MGDA, J, c_of(J), {"mgda_gn": "l2"})[0]) for k, J in cases.items()}
  # LibMTL's CAGrad hard-codes three tasks (reshape(1, 3)): T = 3 cases only.
  out["cagrad_rescale1"] = {k: _r(run(W.CAGrad, J, c_of(J), {"calpha": 0.4, "rescale": 1})[0])
                            for k, J in cases.items() if len(J) == 3}
  out["imtl"] = {k: _r(run(W.IMTL, J, c_of(J), {})[0]) for k, J in cases.items()}
  out["gls"] = {k: _r(run(W.GLS, J, c_of(J), {})[0]) for k, J in cases.items()}
  out["uw"] = {k: _r(run(W.UW, J, c_of(J), {})[0]) for k, J in cases.items()}
  out["losses_of_case"] = {k: c_of(J) for k, J in cases.items()}
  # PCGrad: Python's random.shuffle picks the order; T = 2 is order-free.
  out["pcgrad_t2"] = _r(run(W.PCGrad, cases["t2_conflict"], [1.0, 1.5], {})[0])
  # DWA at epoch 2 with a loss buffer [T, epochs].
  buf = np.array(inp["losses"]).T                                      # [3, 4]
  out["dwa_epoch2"] = _r(run(W.DWA, cases["t3_unequal"], [1.0, 1.5, 2.0], {"T": 2.0},
                             epoch=2, buffer=buf)[0])
  out["dwa_buffer"] = _r(buf)
  # GradVac T=2 (order-free), beta = 0.5, one step.
  random.seed(0)
  out["gradvac_t2"] = _r(run(W.GradVac, cases["t2_conflict"], [1.0, 1.5],
                             {"GradVac_beta": 0.5, "GradVac_group_type": 0, "beta": 0.5})[0])
  # RLW: the weights are softmax of N(0, 1) draws (recorded).
  torch.manual_seed(4)
  z = torch.randn(3)
  torch.manual_seed(4)
  g, w, _ = run(W.RLW, cases["t3_unequal"], [1.0, 1.5, 2.0], {"dist": "Normal"})
  out["rlw"] = {"z": _r(z.numpy()), "grad": _r(g), "weights": _r(w)}
  return out


# --------------------------------------------------------------------------- NumPy refs
def softmax(v):
  e = np.exp(v - np.max(v))
  return e / e.sum()


def simplex_proj(v):
  s = np.sort(v)[::-1]
  css = np.cumsum(s)
  rho = np.nonzero(s - (css - 1) / np.arange(1, len(v) + 1) > 0)[0][-1]
  return np.maximum(v - (css[rho] - 1) / (rho + 1), 0)


def famo_reference(losses_seq, lr=0.025, gamma=1e-3):
  """FAMO (Liu et al. 2023, Alg. 1): weights per step and the logits after each update.

  Weights of step k: ``w = c z / L_k``, ``z = softmax(xi)``, ``c = 1 / sum(z / L_k)``.
  After step k (k >= 1): ``delta = log L_{k-1} - log L_k``,
  ``xi <- xi - lr * (J_z^T delta + gamma xi)``, ``J_z = diag(z) - z z^T``.
  """
  t = len(losses_seq[0])
  xi, prev, ws = np.zeros(t), None, []
  for L in np.asarray(losses_seq, np.float64):
    if prev is not None:
      z = softmax(xi)
      delta = np.log(prev) - np.log(L)
      xi = xi - lr * ((np.diag(z) - np.outer(z, z)) @ delta + gamma * xi)
    z = softmax(xi)
    c = 1.0 / np.sum(z / L)
    ws.append(c * z / L)
    prev = L
  return ws


def stch_reference(losses, mu=1.0, pref=None, ideal=None):
  """STCH (Lin et al. 2024, Eq. 9): weights = d/dL of mu log sum exp(pref (L - z) / mu)."""
  L = np.asarray(losses, np.float64)
  pref = np.ones_like(L) if pref is None else np.asarray(pref)
  z = np.zeros_like(L) if ideal is None else np.asarray(ideal)
  return pref * softmax(pref * (L - z) / mu)


def db_mtl_reference(seq, seq_losses, beta=0.9, sigma=0.5):
  """DB-MTL (Lin et al. 2023, Alg. 1): updates per step.

  ``h_t = grad log L_t = g_t / L_t``; ``ghat_t <- beta_k ghat_t + (1 - beta_k) h_t`` with
  ``beta_k = beta / k^sigma`` (k = 1, 2, ...; ``ghat = 0`` at start); update
  ``sum_t (max_s ||ghat_s|| / ||ghat_t||) ghat_t``.
  """
  ghat, outs = None, []
  for k, (J, L) in enumerate(zip(seq, seq_losses), start=1):
    h = np.asarray(J) / np.asarray(L)[:, None]
    ghat = np.zeros_like(h) if ghat is None else ghat
    b = beta / k ** sigma
    ghat = b * ghat + (1 - b) * h
    n = np.linalg.norm(ghat, axis=1)
    outs.append((n.max() / n) @ ghat)
  return outs


def moco_reference(seq, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0):
  """MoCo (Fernando et al. 2023, Alg. 2): updates per step.

  ``y_t <- y_t - beta_k (y_t - g_t)`` (``y = 0`` at start), ``beta_k = beta / k^sigma_b``;
  ``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T lambda + rho lambda))``,
  ``gamma_k = gamma / k^sigma_g``, ``lambda_0`` uniform; update ``Y^T lambda``.
  """
  y, lam, outs = None, None, []
  for k, J in enumerate(seq, start=1):
    J = np.asarray(J)
    y = np.zeros_like(J) if y is None else y
    lam = np.full(len(J), 1 / len(J)) if lam is None else lam
    y = y - beta / k ** beta_sigma * (y - J)
    lam = simplex_proj(lam - gamma / k ** gamma_sigma * (y @ y.T @ lam + rho * lam))
    outs.append(y.T @ lam)
  return outs


def min_norm_reference(J):
  """MGDA's min-norm point of the convex hull, exactly: every support set's KKT system."""
  import itertools
  J = np.asarray(J, np.float64)
  G, t = J @ J.T, len(J)
  best = None
  for r in range(1, t + 1):
    for S in itertools.combinations(range(t), r):
      S = list(S)
      A = np.zeros((r + 1, r + 1))
      A[:r, :r], A[:r, r], A[r, :r] = G[np.ix_(S, S)], 1.0, 1.0
      try:
        x = np.linalg.solve(A, np.eye(r + 1)[r])
      except np.linalg.LinAlgError:
        continue
      w = np.zeros(t)
      w[S] = x[:r]
      if (w >= -1e-12).all() and (best is None or w @ G @ w < best[0]):
        best = (w @ G @ w, w)
  return best[1] @ J


def numpy_goldens(inp: dict) -> dict:
  seq, seq_losses = inp["seq"], inp["seq_losses"]
  return {
      "mgda_exact": {k: _r(min_norm_reference(J)) for k, J in inp["cases"].items()},
      "famo_weights": [_r(w) for w in famo_reference(inp["losses"])],
      "stch_weights": [_r(stch_reference(l, mu=1.0)) for l in inp["losses"]],
      "stch_weights_mu01": [_r(stch_reference(l, mu=0.1)) for l in inp["losses"]],
      "db_mtl": [_r(o) for o in db_mtl_reference(seq, seq_losses)],
      "moco": [_r(o) for o in moco_reference(seq)],
  }


def main() -> None:
  inp = inputs()
  files = {"inputs.json": inp, "torchjd.json": torchjd_goldens(inp),
           "libmtl.json": libmtl_goldens(inp), "numpy.json": numpy_goldens(inp)}
  for name, data in files.items():
    with open(os.path.join(HERE, name), "w") as f:
      json.dump(data, f, separators=(",", ":"))
    print(name, os.path.getsize(os.path.join(HERE, name)), "bytes")


if __name__ == "__main__":
  main()
