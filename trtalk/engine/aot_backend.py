"""`AotBackend`: one stage from a torch.export + AOTInductor package (``.pt2``; see `trtalk.export.aot`).

Loading is a ``dlopen`` of the package's compiled library and a copy of its weights to the
device: well under a second, no compilation. The package is never loaded blindly: its sidecar
must exist, match the wanted key (or, for a file the user named, this machine's target and
torch), and the file's size and sha256 must match the sidecar's.

Batch: a dynamic-batch package runs any batch up to its ``max_batch`` as is; a bucketed one
runs each batch on the smallest bucket that holds it, padding with copies of the last sample
and slicing the result. Inputs and outputs are float32 (fp16 packages cast inside the graph).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trtalk.engine.backend import Array, Backend
from trtalk.export.engine_file import check_engine
from trtalk.errors import TrtalkError
from trtalk.export.aot import DEFAULT_MODEL, AotKey, aot_target, load_aot_model
from trtalk.export.stages import StageSpec

log = logging.getLogger(__name__)


def pick_bucket(buckets: tuple[int, ...], batch: int) -> int:
    """The smallest of ``buckets`` (ascending) that holds ``batch``."""
    for b in buckets:
        if b >= batch:
            return b
    raise ValueError(f"batch {batch} is above the largest bucket {buckets[-1]}")


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` grown to ``size`` samples with copies of its last sample (inputs stay in range)."""
    extra = size - int(x.shape[0])
    if extra <= 0:
        return x
    return torch.cat([x, x[-1:].expand(extra, *x.shape[1:])], 0).contiguous()


class AotBackend(Backend):
    """Runs one stage's AOTInductor package on ``device`` (cpu, cuda or cuda:N)."""

    def __init__(self, spec: StageSpec, package: str | Path, *, device: str = "cpu",
                 key: AotKey | None = None):
        super().__init__(spec, key.max_batch if key else 1, key.precision if key else "fp32")
        self.path = Path(package)
        self._device = torch.device(device)
        self._key = key
        self._buckets: tuple[int, ...] = ()
        self._models: dict[int | None, object] = {}  # static batch (None: dynamic) -> loader

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The static batch sizes of the package; () when its batch axis is dynamic."""
        return self._buckets

    def load(self) -> "AotBackend":
        if self._loaded:
            return self
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise TrtalkError(f"--device {self._device}: this torch has no CUDA device; use --device cpu")
        ok, reason, sc = check_engine(self.path, self._key)
        if not ok:
            raise TrtalkError(f"AOT package {self.path} cannot be used: {reason}; delete it and "
                              f"rebuild with `trtalk export --target aot`")
        assert sc is not None
        key = AotKey(**sc["key"])
        if self._key is None:  # a file the user named: it must suit this machine and torch
            here = aot_target(str(self._device))
            if key.compute_capability != here or key.trt_version != f"torch {torch.__version__}":
                raise TrtalkError(f"AOT package {self.path} was built for {key.compute_capability} "
                                  f"with {key.trt_version}; this is {here} with torch "
                                  f"{torch.__version__}: rebuild with `trtalk export --target aot`")
        self._key, self._precision, self._max_batch = key, key.precision, key.max_batch
        self._buckets = key.bucket_sizes
        names = {None: DEFAULT_MODEL} if not self._buckets else {b: f"b{b}" for b in self._buckets}
        try:
            self._models = {b: load_aot_model(self.path, n, str(self._device)) for b, n in names.items()}
        except RuntimeError as exc:
            raise TrtalkError(f"AOTInductor cannot load {self.path}: {str(exc).splitlines()[0][:200]}; "
                              f"delete it and rebuild with `trtalk export --target aot`") from None
        self._loaded = True
        log.info("loaded AOT package %s (%s, batch %s)", self.path.name, key.precision,
                 ",".join(map(str, self._buckets)) if self._buckets else f"1..{key.max_batch}")
        return self

    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        args = [inputs[n] if as_torch else torch.from_numpy(inputs[n]) for n in self.spec.input_names]
        caller_device = args[0].device
        batch = int(args[0].shape[0])
        bucket = pick_bucket(self._buckets, batch) if self._buckets else None
        args = [a.to(self._device) for a in args]
        if bucket is not None:
            args = [pad_batch(a, bucket) for a in args]
        with torch.inference_mode():
            outs = self._models[bucket].boxed_run(args)  # type: ignore[attr-defined]
        outs = [o[:batch].float() for o in outs]
        if as_torch:
            return {n: o.to(caller_device) for n, o in zip(self.spec.output_names, outs)}
        return {n: o.cpu().numpy() for n, o in zip(self.spec.output_names, outs)}
