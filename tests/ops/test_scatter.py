"""Native segment reductions against brute-force Python loops."""
import pytest
import torch

from pcdet.ops import fast_paths
from pcdet.ops.scatter import scatter_max, scatter_mean, scatter_sum


def random_segments(seed, num_rows=200, num_segments=30, channels=(5,)):
    generator = torch.Generator().manual_seed(seed)
    # Segment 3 and the last segment stay empty to exercise the empty-segment conventions.
    index = torch.randint(0, num_segments - 1, (num_rows,), generator=generator)
    index[index == 3] = 4
    src = torch.randn((num_rows,) + channels, generator=generator, dtype=torch.float64)
    return src, index, num_segments


def loop_reduce(src, index, dim_size, reduce):
    outs, args = [], []
    for segment in range(dim_size):
        rows = [i for i in range(src.shape[0]) if index[i] == segment]
        if not rows:
            outs.append(torch.zeros(src.shape[1:], dtype=src.dtype))
            args.append(torch.full(src.shape[1:], src.shape[0], dtype=torch.long))
            continue
        members = src[rows]
        if reduce == 'sum':
            outs.append(members.sum(0))
        elif reduce == 'mean':
            outs.append(members.sum(0) / len(rows))
        else:
            best = members.max(0).values
            outs.append(best)
            # lowest row attaining the maximum, element-wise
            first = torch.stack([torch.tensor(rows)[(members[:, c] == best[c]).nonzero()[0, 0]]
                                 for c in range(members.shape[1])])
            args.append(first)
    return torch.stack(outs), (torch.stack(args) if args else None)


@pytest.mark.parametrize('seed', [0, 1])
def test_sum_and_mean_match_loops(seed):
    src, index, dim_size = random_segments(seed)
    expected_sum, _ = loop_reduce(src, index, dim_size, 'sum')
    expected_mean, _ = loop_reduce(src, index, dim_size, 'mean')
    torch.testing.assert_close(scatter_sum(src, index, dim_size), expected_sum)
    torch.testing.assert_close(scatter_mean(src, index, dim_size), expected_mean)
    assert (scatter_mean(src, index, dim_size)[[3, dim_size - 1]] == 0).all()


@pytest.mark.parametrize('seed', [2, 3])
def test_max_and_argmax_match_loops(seed):
    src, index, dim_size = random_segments(seed)
    src = src.round(decimals=1)  # create ties within segments
    expected_max, expected_arg = loop_reduce(src, index, dim_size, 'max')
    maxima, argmax = scatter_max(src, index, dim_size)
    torch.testing.assert_close(maxima, expected_max)
    assert torch.equal(argmax, expected_arg)
    assert (argmax[3] == src.shape[0]).all() and (maxima[3] == 0).all()


def test_negative_values_and_default_dim_size():
    src = torch.tensor([[-3.0], [-1.0], [-2.0]])
    index = torch.tensor([1, 1, 0])
    maxima, argmax = scatter_max(src, index)
    assert maxima.tolist() == [[-2.0], [-1.0]] and argmax.tolist() == [[2], [1]]
    assert scatter_sum(src, index).shape == (2, 1)


def test_one_dimensional_src_and_integer_mean():
    src = torch.tensor([1, 2, 4, 7])
    index = torch.tensor([0, 0, 2, 2])
    assert scatter_sum(src, index, 3).tolist() == [3, 0, 11]
    assert scatter_mean(src, index, 3).tolist() == [1, 0, 5]  # floor division for integers, as torch_scatter
    assert scatter_max(src.float(), index, 3)[1].tolist() == [1, 4, 3]


def test_empty_input():
    src, index = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    assert scatter_sum(src, index).shape == (0, 4)
    maxima, argmax = scatter_max(src, index, 2)
    assert maxima.shape == (2, 4) and (argmax == 0).all()
    assert (scatter_mean(src, index, 2) == 0).all()


def test_gradients():
    src = torch.tensor([[1.0], [3.0], [3.0], [2.0]], requires_grad=True)
    index = torch.tensor([0, 0, 0, 1])
    scatter_mean(src, index, 2).sum().backward()
    assert src.grad.view(-1).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    src.grad = None
    scatter_max(src, index, 2)[0].sum().backward()
    # Native amax splits the gradient among tied maxima (torch_scatter would give [0, 1, 0, 1]).
    assert src.grad.view(-1).tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0])


def test_bad_index_shape():
    with pytest.raises(ValueError, match=r'index must have shape \(N,\)'):
        scatter_sum(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 2)


def test_installed_fast_path_matches_reference(monkeypatch):
    fast = fast_paths.get_fast_op('scatter_max')
    if fast is None:
        pytest.skip('no fast path common_ops.scatter_max installed')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    src, index, dim_size = random_segments(4, 5000, 700, (16,))
    src, index = src.float().to(device), index.to(device)
    result = fast(src, index, dim_size)
    if result is NotImplemented:
        pytest.skip(f'common_ops.scatter_max declines {device} inputs')
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    reference = scatter_max(src, index, dim_size)
    torch.testing.assert_close(result[0], reference[0])
    assert torch.equal(result[1], reference[1])


# ---- scatter_amax: the maxima of scatter_max without the argmax ----

@pytest.mark.parametrize('seed,channels', [(5, (5,)), (6, (3, 4)), (7, ())])
def test_amax_equals_scatter_max_values(seed, channels):
    from pcdet.ops.scatter import scatter_amax
    src, index, dim_size = random_segments(seed, channels=channels)
    src = src.round(decimals=1)  # ties within segments
    expected_max, _ = loop_reduce(src.reshape(len(src), -1), index, dim_size, 'max')
    maxima = scatter_amax(src, index, dim_size)
    assert maxima.shape == (dim_size,) + channels and maxima.dtype == src.dtype
    assert torch.equal(maxima, scatter_max(src, index, dim_size)[0])
    assert torch.equal(maxima.reshape(dim_size, -1), expected_max)
    assert (maxima[[3, dim_size - 1]] == 0).all()
    assert torch.equal(scatter_amax(src, index), scatter_max(src, index)[0])  # default dim_size
    ints = (src * 10).long()
    assert torch.equal(scatter_amax(ints, index, dim_size), scatter_max(ints, index, dim_size)[0])


def test_amax_gradient_empty_input_and_bad_index():
    from pcdet.ops.scatter import scatter_amax
    src = torch.tensor([[1.0, -2.0], [3.0, -1.0], [3.0, -5.0], [2.0, 0.5]], requires_grad=True)
    index = torch.tensor([0, 0, 0, 2])
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    (scatter_amax(src, index, 3) * weights).sum().backward()
    grad_amax, src.grad = src.grad.clone(), None
    (scatter_max(src, index, 3)[0] * weights).sum().backward()
    assert torch.equal(grad_amax, src.grad)
    assert grad_amax.tolist() == [[0.0, 0.0], [0.5, 2.0], [0.5, 0.0], [5.0, 6.0]]
    assert scatter_amax(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2).tolist() == [[0.0] * 4] * 2
    assert scatter_amax(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).shape == (0, 4)
    with pytest.raises(ValueError, match=r'index must have shape \(N,\)'):
        scatter_amax(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 2)
