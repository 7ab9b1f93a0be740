"""Every line of the CUDA-only torch paths runs here on the CPU, except the device calls: fp16 and
channels_last modules built and run, the CUDA-graph wrapper with a stand-in graph, torch.compile
with a stand-in backend. (The fp16 crash on the H100 -- channels_last on 5-D modulated-conv weights
-- is the kind of bug these catch.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

from trtalk.engine.backend import GraphAPI, TorchBackend, to_channels_last
from trtalk.engine.runner import RunnerOptions, open_runner
from trtalk.errors import TrtalkError
from trtalk.export.stages import STAGES, example_inputs, stage_specs
from trtalk.families.pcavs.model import PCAVS, PCAVSConfig

#: Graphed runners pad a batch to its bucket (3 -> 4); CPU kernels may sum a padded batch in
#: another order, so fp32 results differ by rounding: 1.54e-5 seen in CI on outputs of order 1.
#: 1e-4 is 6x that, and a real fault (a stale replay, a wrong input slot) is off by 1e-1 or more.
GRAPH_PAD_ATOL = 1e-4


@pytest.fixture(scope="module")
def model() -> PCAVS:
    return PCAVS.random(seed=5, config=PCAVSConfig.small())


class FakeGraphs(GraphAPI):
    """Records the captured function and replays it: the CUDA graph contract without a GPU."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, fn):
        self.captures += 1
        out = fn()
        return (fn, out), out

    def replay(self, graph) -> None:
        self.replays += 1
        fn, static_out = graph
        # A CUDA graph writes into the same static output buffers on every replay.
        with torch.inference_mode():  # the static outputs were made in inference mode
            for dst, src in zip(static_out, fn()):
                dst.copy_(src)


def test_channels_last_skips_5d_weights(model: PCAVS) -> None:
    gen = TorchBackend(stage_specs(model)["generator"], model, precision="fp16", channels_last=True).load()
    dims = {p.dim() for p in gen.module.parameters()}
    assert 5 in dims  # the modulated convs' weights are 5-D and stay as they are
    for p in gen.module.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="rank 4"):  # what crashed every fp16 backend on the H100
        model.netG.to(memory_format=torch.channels_last)
    assert to_channels_last(torch.nn.Conv2d(3, 4, 3)).weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stage", STAGES)
def test_fp16_channels_last_stage_matches_fp32(model: PCAVS, stage: str) -> None:
    """The CUDA configuration (fp16 weights and activations, channels_last, fp32 I/O) on CPU."""
    spec = stage_specs(model)[stage]
    ref = TorchBackend(spec, model, precision="fp32").load()
    half = TorchBackend(spec, model, precision="fp16", channels_last=True).load()
    assert half.dtype == "float16"
    inputs = dict(zip(spec.input_names, example_inputs(spec, batch=2, seed=3)))
    want, got = ref.run(inputs), half.run(inputs)
    for name in spec.output_names:
        assert got[name].dtype == torch.float32 and got[name].shape == want[name].shape
        scale = want[name].abs().max().item() + 1e-6
        err = (got[name] - want[name]).abs().max().item() / scale
        assert err < 0.05, f"{stage}.{name}: fp16 off by {err:.3g} of the output range"


def test_graph_wrapper_captures_once_per_batch_and_replays(model: PCAVS) -> None:
    spec = stage_specs(model)["generator"]
    fake = FakeGraphs()
    graphed = TorchBackend(spec, model, cuda_graphs=True, graph_api=fake).load()
    eager = TorchBackend(spec, model).load()
    for batch, seed in ((2, 1), (2, 2), (3, 3)):
        inputs = dict(zip(spec.input_names, example_inputs(spec, batch=batch, seed=seed)))
        out = graphed.run(inputs)["image"]
        torch.testing.assert_close(out, eager.run(inputs)["image"], atol=1e-5, rtol=0)
    assert fake.captures == 2  # batch 2 and batch 3, each once
    assert fake.replays == 3


def test_compile_wrapper_runs_with_a_stand_in_backend(model: PCAVS) -> None:
    spec = stage_specs(model)["audio"]
    compiled = TorchBackend(spec, model, compile=True, compile_backend="eager").load()
    eager = TorchBackend(spec, model).load()
    assert type(compiled.module).__name__ == "OptimizedModule"
    (mel,) = example_inputs(spec, batch=2, seed=4)
    torch.testing.assert_close(compiled.run({"mel": mel})["mouth"], eager.run({"mel": mel})["mouth"])


def test_runner_options_refused_where_they_mean_nothing() -> None:
    for backend, opts, match in (("onnxruntime", RunnerOptions(noise="random"), "--noise random"),
                                 ("tensorrt", RunnerOptions(modconv="grouped"), "--modconv grouped"),
                                 ("onnxruntime", RunnerOptions(compile=True), "compile"),
                                 ("torch", RunnerOptions(cuda_graphs=True), "CUDA graphs"),
                                 ("tvm", RunnerOptions(), "unknown backend")):
        with pytest.raises(TrtalkError, match=match):
            open_runner(backend, None, "cpu", opts)
    with pytest.raises(TrtalkError, match="banana"):
        open_runner("torch", None, "banana")


def test_runner_noise_option_reaches_the_generator(model: PCAVS) -> None:
    import copy

    from trtalk.models.generator import NoiseInjection

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, NoiseInjection):
            m.weight.data.fill_(0.5)  # initialised to zero: noise would change nothing
    style, id_map = example_inputs(stage_specs(model)["generator"], batch=1, seed=8)
    outs = {}
    for noise in ("fixed", "zero"):
        r = open_runner("torch", model, "cpu", RunnerOptions(noise=noise))
        outs[noise] = r.generate(style, id_map)
    assert (outs["fixed"] - outs["zero"]).abs().max().item() > 1e-4


def test_graphed_runner_one_graph_per_bucket_matches_eager(model: PCAVS) -> None:
    """cuda_graphs at the runner level: frame / synthesize / encode_pose each record one graph per
    batch bucket (padded), and replays give the eager numbers."""
    from trtalk.engine.graphs import GraphedFunction, bucket_for

    fake = FakeGraphs()
    graphed = open_runner("torch", model, "cpu", RunnerOptions(cuda_graphs=True, graph_api=fake))
    eager = open_runner("torch", model, "cpu")
    assert graphed.graphed and not eager.graphed
    assert all(not b._cuda_graphs for b in graphed.backends.values())  # stages stay eager inside
    specs = stage_specs(model)
    for batch, seed in ((1, 1), (3, 2), (3, 3), (2, 4)):
        (image,) = example_inputs(specs["pose"], batch, seed=seed)
        (mel,) = example_inputs(specs["audio"], batch, seed=seed + 10)
        style, id_map = example_inputs(specs["generator"], batch, seed=seed + 20)
        id_vec = style[:, :2048].contiguous()
        torch.testing.assert_close(graphed.frame(mel, image, id_vec, id_map),
                                   eager.frame(mel, image, id_vec, id_map), atol=GRAPH_PAD_ATOL, rtol=0)
        pose = eager.encode_pose(image)
        torch.testing.assert_close(graphed.synthesize(mel, pose, id_vec, id_map),
                                   eager.synthesize(mel, pose, id_vec, id_map), atol=GRAPH_PAD_ATOL, rtol=0)
    assert graphed._frame_graph.captured == [1, 2, 4]  # batches 1, 3 (bucket 4), 2
    assert bucket_for(3) == 4 and bucket_for(65) == 64
    with pytest.raises(ValueError, match="one replay"):
        graphed.frame(mel, image, id_vec, id_map, mark=lambda: None)
    # Larger than the largest bucket: chunks.
    fn = GraphedFunction(lambda a: a * 2, "cpu", FakeGraphs(), buckets=(1, 2))
    torch.testing.assert_close(fn(torch.arange(5.0)[:, None]), torch.arange(5.0)[:, None] * 2)
    assert fn.captured == [1, 2]


# ------------------------------------------------------------------ PD-FGC: the same paths


@pytest.fixture(scope="module")
def pdfgc():
    from trtalk.families.pdfgc.model import PDFGC, PDFGCConfig

    return PDFGC.random(seed=6, config=PDFGCConfig.small())


@pytest.mark.parametrize("stage", ["motion", "generator"])
def test_pdfgc_fp16_channels_last_stage_matches_fp32(pdfgc, stage: str) -> None:
    """PD-FGC's CUDA configuration on CPU: the motion stage's three heads (BatchNorm1d) and the
    2590-wide generator with the seeded noise maps, fp16 + channels_last vs fp32."""
    spec = stage_specs(pdfgc)[stage]
    ref = TorchBackend(spec, pdfgc, precision="fp32").load()
    half = TorchBackend(spec, pdfgc, precision="fp16", channels_last=True).load()
    inputs = dict(zip(spec.input_names, example_inputs(spec, batch=2, seed=3)))
    want, got = ref.run(inputs), half.run(inputs)
    assert list(got) == spec.output_names
    for name in spec.output_names:
        assert got[name].dtype == torch.float32 and got[name].shape == want[name].shape
        scale = want[name].abs().max().item() + 1e-6
        err = (got[name] - want[name]).abs().max().item() / scale
        assert err < 0.05, f"{stage}.{name}: fp16 off by {err:.3g} of the output range"


def test_pdfgc_graphed_runner_and_family_match_eager(pdfgc) -> None:
    """cuda_graphs for PD-FGC: encode_motion, encode_pose, encode_audio, generate and frame
    replay one graph per bucket with the eager numbers, and the family on the graphed runner
    makes the same frames."""
    from conftest import family_frames

    from trtalk.families.pdfgc.runtime import PDFGCFamily
    from trtalk.runtime.options import open_family

    fake = FakeGraphs()
    graphed = open_runner("torch", pdfgc, "cpu", RunnerOptions(cuda_graphs=True, graph_api=fake))
    eager = open_runner("torch", pdfgc, "cpu")
    assert graphed.family == "pdfgc" and graphed.graphed
    specs = stage_specs(pdfgc)
    for batch, seed in ((1, 1), (3, 2)):
        (image,) = example_inputs(specs["motion"], batch, seed=seed)
        (mel,) = example_inputs(specs["audio"], batch, seed=seed + 10)
        style, id_map = example_inputs(specs["generator"], batch, seed=seed + 20)
        id_vec = style[:, :2048].contiguous()
        for g, e in zip(graphed.encode_motion(image), eager.encode_motion(image), strict=True):
            torch.testing.assert_close(g, e, atol=GRAPH_PAD_ATOL, rtol=0)
        assert graphed.encode_pose(image).shape == (batch, 42)
        torch.testing.assert_close(graphed.frame(mel, image, id_vec, id_map),
                                   eager.frame(mel, image, id_vec, id_map), atol=GRAPH_PAD_ATOL, rtol=0)
    assert graphed.encode_motion.captured == [1, 4] and graphed._frame_graph.captured == [1, 4]
    fam = open_family("pdfgc", pdfgc, options=RunnerOptions(cuda_graphs=True, graph_api=FakeGraphs()))
    out = family_frames([fam, PDFGCFamily(pdfgc, random_weights=True)])
    assert abs(out[0] - out[1]).max() <= 1
