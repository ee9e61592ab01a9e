import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from qatlab.nn.ste import fake_quant, lsq_fake_quant, lsq_fake_quant_reference, pact_fake_quant, round_ste
from tests.conftest import float_tensors


def test_round_ste_rounds_half_even_and_passes_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4


def test_identity_and_clipped_gradients():
    s, z = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 2.0], requires_grad=True)
    fake_quant(x, s, z, -8, 7, None, "identity").sum().backward()
    assert x.grad.tolist() == [1.0] * 5
    x.grad = None
    fake_quant(x, s, z, -8, 7, None, "clipped").sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@given(x=float_tensors(min_dims=2, max_dims=3, magnitude=10.0), data=st.data())
def test_lsq_fused_matches_reference(x, data):
    axis = data.draw(st.sampled_from([None, 0]))
    n = 1 if axis is None else x.shape[0]
    scale = torch.tensor(data.draw(st.lists(st.floats(0.01, 2.0), min_size=n, max_size=n)), dtype=torch.float32)
    zp = torch.tensor(data.draw(st.lists(st.floats(0.0, 15.0), min_size=n, max_size=n)), dtype=torch.float32)
    g = data.draw(st.sampled_from([1.0, 0.1]))
    # torch's learnable kernels round x/s + z as one number, we round x/s and add z:
    # the same except at an exact tie with an odd zero point. Ties are measure-zero
    # in real data; here they are excluded rather than papered over with tolerance.
    v = x * (1.0 / (scale if axis is None else scale.reshape(-1, *([1] * (x.dim() - 1)))))
    assume(not bool(((v - v.floor() - 0.5).abs() < 1e-5).any()))  # ties, computed either way
    grads = []
    outs = []
    for f in (lsq_fake_quant, lsq_fake_quant_reference):
        xx, ss, zz = x.clone().requires_grad_(), scale.clone().requires_grad_(), zp.clone().requires_grad_()
        y = f(xx, ss, zz, 0, 15, axis, g)
        y.backward(torch.ones_like(y))
        outs.append(y.detach())
        grads.append((xx.grad, ss.grad, zz.grad))
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    # x gradients are 0/1 masks; a tie at the clip edge may round either way, so compare counts.
    assert abs(float(grads[0][0].sum() - grads[1][0].sum())) <= 1
    tol = 1e-3 * (1 + float(x.abs().max()))
    assert torch.allclose(grads[0][1], grads[1][1], atol=tol, rtol=1e-3)
    assert torch.allclose(grads[0][2], grads[1][2], atol=tol, rtol=1e-3)


def test_pact_gradients():
    alpha = torch.tensor([1.0], requires_grad=True)
    x = torch.tensor([-1.0, 0.2, 0.7, 1.0, 3.0], requires_grad=True)
    y = pact_fake_quant(x, alpha, 4)
    assert float(y.max()) == 1.0 and float(y.min()) == 0.0
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]
    assert float(alpha.grad) == 9.0  # upstream gradients where x >= alpha


@given(x=float_tensors(min_dims=1, max_dims=4, magnitude=10.0), data=st.data())
def test_lsq_per_tensor_cpu_path_matches_torch_kernel(x, data):
    """The vectorised CPU path gives torch's learnable kernel's values bit for bit and
    its gradients up to float summation order."""
    from qatlab.nn.ste import _LSQPerTensorCPU

    bits = data.draw(st.sampled_from([2, 4, 8]))
    signed = data.draw(st.booleans())
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    scale = torch.tensor([data.draw(st.floats(0.01, 2.0))])
    # torch's backward takes the zero point as int(clamp(z + 0.5)) where its forward
    # takes round(clamp(z)): they agree only for integer z >= 0. Ours follows the
    # forward everywhere (as the paper's reference above does), so compare there.
    zp = torch.tensor([float(data.draw(st.integers(max(qmin, 0), qmax)))])
    g = data.draw(st.sampled_from([1.0, 0.05]))
    # torch's backward rounds x/s + z as one number (its forward rounds x/s, then adds
    # z): at an exact tie with an odd zero point its mask disagrees with its own forward.
    v = x * (1.0 / scale)
    assume(not bool(((v - v.floor() - 0.5).abs() < 1e-5).any()))  # ties, computed either way
    res = []
    for f in (_LSQPerTensorCPU.apply, torch._fake_quantize_learnable_per_tensor_affine):
        xx, ss, zz = x.clone().requires_grad_(), scale.clone().requires_grad_(), zp.clone().requires_grad_()
        y = f(xx, ss, zz, qmin, qmax, g)
        dy = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        y.backward(dy)
        res.append((y.detach(), xx.grad, ss.grad, zz.grad))
    (y0, dx0, ds0, dz0), (y1, dx1, ds1, dz1) = res
    assert torch.equal(y0, y1)
    assert torch.equal(dx0, dx1)
    tol = 1e-4 * (1 + float((x.abs().sum() / scale).item()) * g)
    assert torch.allclose(ds0, ds1, atol=tol, rtol=1e-4)
    assert torch.allclose(dz0, dz1, atol=1e-4 * (1 + x.numel() * float(scale) * g), rtol=1e-4)


def test_lsq_per_tensor_cpu_path_skips_unneeded_gradients():
    from qatlab.nn.ste import _LSQPerTensorCPU

    x = torch.randn(50)
    s = torch.tensor([0.1], requires_grad=True)
    z = torch.tensor([0.0])  # symmetric LSQ: the zero point is not learned
    _LSQPerTensorCPU.apply(x, s, z, -8, 7, 1.0).sum().backward()
    assert s.grad is not None and z.grad is None


@given(x=float_tensors(min_dims=1, max_dims=4, magnitude=10.0), data=st.data())
def test_clipped_per_tensor_cpu_path_matches_torch_kernel(x, data):
    """fake_quant(ste="clipped") per tensor on the CPU: torch's values and gradient mask, exactly."""
    bits = data.draw(st.sampled_from([2, 4, 8]))
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if data.draw(st.booleans()) else (0, 2**bits - 1)
    scale = torch.tensor(data.draw(st.floats(0.01, 2.0)))
    zp = torch.tensor(data.draw(st.integers(qmin, qmax)), dtype=torch.int32)
    res = []
    for f in (
        lambda t: fake_quant(t, scale, zp, qmin, qmax, None, "clipped"),
        lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zp, qmin, qmax),
    ):
        xx = x.clone().requires_grad_()
        y = f(xx)
        y.backward(torch.ones_like(y))
        res.append((y.detach(), xx.grad))
    assert torch.equal(res[0][0], res[1][0])
    assert torch.equal(res[0][1], res[1][1])


@given(x=float_tensors(min_dims=2, max_dims=4, magnitude=10.0), data=st.data())
def test_lsq_per_channel_symmetric_cpu_path_matches_torch_kernel(x, data):
    from qatlab.nn.ste import _LSQPerChannelSymCPU

    axis = data.draw(st.integers(0, x.dim() - 1))
    bits = data.draw(st.sampled_from([2, 4, 8]))
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    n = x.shape[axis]
    scale = torch.tensor(data.draw(st.lists(st.floats(0.01, 2.0), min_size=n, max_size=n)), dtype=torch.float32)
    g = data.draw(st.sampled_from([1.0, 0.05]))
    res = []
    for f in (
        lambda t, s: _LSQPerChannelSymCPU.apply(t, s, axis, qmin, qmax, g),
        lambda t, s: torch._fake_quantize_learnable_per_channel_affine(t, s, torch.zeros(n), axis, qmin, qmax, g),
    ):
        xx, ss = x.clone().requires_grad_(), scale.clone().requires_grad_()
        y = f(xx, ss)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        res.append((y.detach(), xx.grad, ss.grad))
    assert torch.equal(res[0][0], res[1][0])
    assert torch.equal(res[0][1], res[1][1])
    assert torch.allclose(res[0][2], res[1][2], rtol=1e-4, atol=1e-4 * (1 + float((x.abs().sum() / scale.min()))) * g)


def test_cpu_paths_keep_a_zero_dim_shape():
    x = torch.tensor(0.37, requires_grad=True)
    s = torch.tensor([0.1], requires_grad=True)
    y = lsq_fake_quant(x, s, torch.tensor([0.0]), -8, 7, None, 1.0)
    y.backward()
    assert y.shape == () and abs(float(y) - 0.4) < 1e-6 and abs(float(s.grad) - 0.3) < 1e-5
    assert fake_quant(torch.tensor(0.37), torch.tensor(0.1), torch.tensor(0), -8, 7).shape == ()
