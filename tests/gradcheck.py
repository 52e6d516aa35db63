"""Finite-difference gradient checking in float64, shared by the gradient tests."""
import numpy as np


def numeric_directional(f, x, direction, eps=1e-6):
    """(f(x + eps d) - f(x - eps d)) / 2 eps, restoring x afterwards. f returns a scalar."""
    orig = x.copy()
    x += eps * direction
    plus = f()
    x[...] = orig - eps * direction
    minus = f()
    x[...] = orig
    return (plus - minus) / (2 * eps)


def numeric_grad(f, x, eps=1e-6):
    """Full central-difference gradient of scalar f() w.r.t. array x (modified in place, restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, rtol=1e-5, atol=1e-7, what=""):
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    err = np.abs(analytic - numeric)
    tol = atol + rtol * np.maximum(np.abs(analytic), np.abs(numeric))
    worst = np.argmax(err - tol) if err.size else 0
    assert np.all(err <= tol), (
        f"{what}: analytic and numeric gradients differ: max abs error {err.max():.3e} "
        f"(analytic {analytic.reshape(-1)[worst]:.6e}, numeric {numeric.reshape(-1)[worst]:.6e})")


def check_directional(f, analytic_grad, x, rng, n_dirs=3, what=""):
    """Checks <analytic, d> against the numeric directional derivative for random directions d."""
    for _ in range(n_dirs):
        d = rng.standard_normal(x.shape)
        assert_grad_close(np.sum(analytic_grad * d), numeric_directional(f, x, d), rtol=1e-5, atol=1e-6,
                          what=what)
