"""Untrusted files cannot make us allocate or loop without bound (issue 13, item 3).

Every crafted file here is refused with one clear error naming the field or member, fast (a deadline turns a hang
into a failure) and with little memory (peak RSS growth and tracemalloc's peak are measured around the call).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import pickletools
import shutil
import signal
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401  (fixture)
from ddpm import checkpoint as ckpt_mod
from ddpm.checkpoint import CheckpointError, load_checkpoint, safe_torch_load, save_model
from ddpm.compression import CodecOptions, CompressionError, compress, decompress
from ddpm.compression.container import pack, unpack
from ddpm.config import MAX_T, DiffusionConfig, MLPConfig, UNetConfig, preset
from ddpm.data import DataError, LMDBImageDataset
from ddpm.data import cifar10 as cifar_mod
from ddpm.data import decode as decode_mod
from ddpm.data import lsun as lsun_mod
from ddpm.interop import diffusers as diff_mod
from ddpm.interop.diffusers import DiffusersFormatError, load_diffusers, save_diffusers, state_dict_to_diffusers
from ddpm.loading import load_model
from ddpm.nets import build_model
from ddpm.untrusted_pickle import MAX_DEPTH, check_pickle

MiB = 1 << 20


# --- measuring: time and memory ------------------------------------------------------------------

@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: an unbounded loop?")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@contextmanager
def bounded(limit: int, seconds: float = 20) -> Iterator[None]:
    """Assert that the body's peak memory growth stays under ``limit`` bytes and that it ends in time.

    Two views: the peak resident set (reset through /proc/self/clear_refs, so torch's allocations count
    too) and tracemalloc's peak (Python and numpy, even where pages were never touched).
    """
    resettable = Path("/proc/self/clear_refs").exists()
    if resettable:
        base = _vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS restarts from the current RSS
    tracemalloc.start()
    try:
        with deadline(seconds):
            yield
    finally:
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert traced < limit, f"allocated {traced / MiB:.1f} MiB (traced), the bound is {limit / MiB:.1f} MiB"
        if resettable:
            grown = _vm("VmHWM") - base
            assert grown < limit, f"resident memory grew by {grown / MiB:.1f} MiB, the bound is {limit / MiB:.1f}"


# --- checkpoints -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("untrusted") / "tiny", T=20)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_meta(path: Path, change: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)  # type: ignore[operator]
    (path / "meta.json").write_text(json.dumps(meta))


def _set_config(path: Path, **fields: object) -> Path:
    """Rewrite meta.json's config (which no hash covers: anyone can craft it)."""
    def change(meta: dict) -> None:
        for dotted, value in fields.items():
            section, name = dotted.split("__")
            meta["config"][section][name] = value
    _edit_meta(path, change)
    return path


def test_a_valid_checkpoint_still_loads_exactly(tiny: Path) -> None:
    model = load_model(tiny)
    net = build_model(model.config.model)
    net.load_state_dict(load_checkpoint(tiny).model)
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 19])
    with torch.no_grad():
        assert torch.equal(model.net.eval()(x, t), net.eval()(x, t))
    assert not any(p.is_meta for p in model.net.parameters())


@pytest.mark.parametrize(("fields", "message"), [
    # 1024 channels: ~1 GB of float32 weights before this fix; 10⁶: ~16 TB
    ({"model__base_channels": 1024}, r"model\.safetensors does not fit the network its config describes: "
                                     r"shape mismatch \(\d+\): .* where the config gives \(1024,"),
    ({"model__base_channels": 10**6}, r"model\.safetensors does not fit .*shape mismatch"),
    # 10⁷ residual blocks: millions of modules even on the meta device; the build is stopped early
    ({"model__num_res_blocks": 10**7}, r"the config asks for at least 80000008 tensors, the file holds \d+"),
    ({"model__num_res_blocks": 20}, r"the config asks for more than \d+ tensors, the file holds \d+"),
    ({"diffusion__T": 10**9}, rf"meta\.json: diffusion\.T must be in 1\.\.{MAX_T}, got 1000000000"),
    # sizes that no weight shows: they size every sample
    ({"model__image_size": 2**20, "data__image_size": 2**20, "model__attn_resolutions": [2**19]},
     r"meta\.json: model\.image_size must be at most 4096, got 1048576"),
    ({"diffusion__levels": 10**9}, r"meta\.json: diffusion\.levels must be at most 256"),
], ids=["base_channels_1024", "base_channels_1e6", "num_res_blocks_1e7", "num_res_blocks_20", "T_1e9",
        "image_size_2e20", "levels_1e9"])
def test_a_config_asking_for_more_than_the_files_hold_is_refused_before_allocating(
        tiny: Path, tmp_path: Path, fields: dict, message: str) -> None:
    path = _set_config(_copy(tiny, tmp_path / "c"), **fields)
    with bounded(64 * MiB), pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_an_mlp_config_is_compared_with_its_weights(tmp_path: Path) -> None:
    cfg = preset("toy2d")
    path = save_model(tmp_path / "toy", cfg.to_dict(), build_model(MLPConfig()).state_dict())
    load_model(path)
    _set_config(path, model__hidden=10**6)
    with bounded(64 * MiB), pytest.raises(CheckpointError, match=r"shape mismatch .* where the config gives "
                                                                r"\(1000000,"):
        load_model(path)


def test_missing_unexpected_and_non_float_tensors_are_listed_in_one_line(tiny: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny)
    state = dict(ckpt.model)
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    path = save_model(tmp_path / "a", ckpt.config, state)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and f"missing (1): {dropped}" in text and "unexpected (1): extra.weight" in text
    ints = {k: v.to(torch.int64) for k, v in ckpt.model.items()}
    path = save_model(tmp_path / "b", ckpt.config, ints)
    with pytest.raises(CheckpointError, match=r"holds non-float tensors \(\d+\): .* \(dtype I64\)"):
        load_model(path)


def test_deeply_nested_or_huge_meta_json_is_a_checkpoint_error(tiny: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = _copy(tiny, tmp_path / "c")
    (path / "meta.json").write_text("[" * 100_000)  # overflows the parser's stack: RecursionError before
    with deadline(10), pytest.raises(CheckpointError, match=r"meta\.json nests JSON deeper than 64 levels"):
        load_checkpoint(path)
    _copy(tiny, tmp_path / "d")
    _edit_meta(tmp_path / "d", lambda m: m["extra"].update(deep=json.loads("[" * 200 + "]" * 200)))
    with pytest.raises(CheckpointError, match="nests JSON deeper than 64"):  # parses, but is walked recursively
        load_model(tmp_path / "d")
    assert ckpt_mod.MAX_JSON_BYTES == 16 * MiB and ckpt_mod.MAX_JSON_DEPTH == 64
    monkeypatch.setattr(ckpt_mod, "MAX_JSON_BYTES", 1000)
    with pytest.raises(CheckpointError, match=r"meta\.json is larger than 1000 bytes"):
        load_model(tiny)


def test_a_crafted_optimizer_structure_is_a_checkpoint_error(tiny: Path, tmp_path: Path) -> None:
    for bad in ({"__tuple__": 3}, {"__float__": "x"}, {"__dict__": [[1]]}, {"__tensor__": [1]}):
        path = _copy(tiny, tmp_path / f"c{len(list(tmp_path.iterdir()))}")
        _edit_meta(path, lambda m, bad=bad: m.update(optimizer={"state": bad}))
        with pytest.raises(CheckpointError, match="malformed optimizer structure"):
            load_checkpoint(path)


def test_a_safetensors_header_claiming_huge_size_is_refused_unread(tiny: Path, tmp_path: Path) -> None:
    path = _copy(tiny, tmp_path / "c")
    data = bytearray((path / "model.safetensors").read_bytes())
    data[:8] = (1 << 62).to_bytes(8, "little")
    (path / "model.safetensors").write_bytes(bytes(data))
    import hashlib

    _edit_meta(path, lambda m: m["files"]["model.safetensors"].update(
        sha256=hashlib.sha256(bytes(data)).hexdigest(), bytes=len(data)))
    with bounded(16 * MiB), pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors "
                                                                r"file: its header claims 4611686018427387904 bytes"):
        load_model(path)
    assert ckpt_mod.MAX_SAFETENSORS_HEADER_BYTES == 16 * MiB


# --- compressed files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coded(tiny: Path) -> tuple[object, bytes]:
    from ddpm.data.digits import digits_dataset
    from ddpm.data.levels import to_levels

    model = load_model(tiny)
    ds = digits_dataset("test", levels=17)
    images = np.stack([to_levels(ds[i], 17).numpy() for i in range(3)])
    return model, compress(model, images, CodecOptions(steps=4, batch_size=2)).data


def _crafted(data: bytes, **fields: object) -> bytes:
    """The file with header fields replaced and a valid CRC (the CRC covers the body: a crafter recomputes it)."""
    header, payload = unpack(data)
    return pack(replace(header, **fields), payload)


def test_an_untouched_file_decodes(coded: tuple) -> None:
    model, data = coded
    assert decompress(model, _crafted(data)).images.shape == (3, 1, 8, 8)


HEADER_CASES = [
    ({"batch": 0}, "header field batch=0; expected 1..4096"),  # decoded forever before
    ({"batch": 5000}, "header field batch=5000; expected 1..4096"),
    ({"threads": 0}, "header field threads=0; expected 1..1024"),
    ({"threads": 65535}, "header field threads=65535; expected 1..1024"),
    ({"count": 0}, "header field count=0; expected >= 1"),
    ({"count": 2**32 - 1}, r"header field count=4294967295: .* more than the 2147483648 a decoder allocates"),
    ({"count": 10**6}, r"header field count=1000000, but its payload of \d+ words cannot hold that many images"),
    ({"channels": 2}, "header field channels=2; expected 1 .grey. or 3 .RGB."),
    ({"channels": 200}, "header field channels=200; expected 1..3"),
    ({"height": 0}, "header field height=0; expected >= 1"),
    ({"height": 16, "width": 16}, "holds 1×16×16 images at 17 levels; this model codes 1×8×8"),
    ({"levels": 1}, "header field levels=1; expected 2..256"),
    ({"levels": 300}, "header field levels=300; expected 2..256"),
    ({"steps": 0}, "header field steps=0; expected 1..100000"),
    ({"steps": 2**32 - 1}, "header field steps=4294967295; expected 1..100000"),
    ({"steps": 21}, "header field steps=21; this model's chain has T = 20 steps"),
    ({"grid_log2": 5}, r"header field grid_log2=5; expected -8..4"),
    ({"window": 0}, "header field window=0; expected 1..255"),
    ({"clip_denoised": 2}, "header field clip_denoised=2; expected 0 or 1"),
    ({"initial_words": 2**32 - 1}, r"header field initial_words=4294967295; a sender of these images starts with "
                                   r"one of \[\d+, "),
    ({"initial_words": 7, "trimmed_words": 0}, "header field initial_words=7"),
    ({"trimmed_words": 2**32 - 1}, "header field trimmed_words=4294967295, more than its initial_words"),
]


@pytest.mark.parametrize(("fields", "message"), HEADER_CASES,
                         ids=["-".join(f"{k}={v}" for k, v in f.items()) for f, _ in HEADER_CASES])
def test_every_header_field_is_checked_before_decoding(coded: tuple, fields: dict, message: str) -> None:
    model, data = coded
    crafted = _crafted(data, **fields)
    with bounded(16 * MiB, seconds=10), pytest.raises(CompressionError, match=message):
        decompress(model, crafted, name="x.ddpz")


def test_trimmed_words_must_leave_the_margin(coded: tuple) -> None:
    model, data = coded
    header, _ = unpack(data)
    with pytest.raises(CompressionError, match=r"header field trimmed_words=\d+; at most initial_words − 2"):
        decompress(model, _crafted(data, trimmed_words=header.initial_words - 1))


def test_a_payload_ending_in_a_zero_word_is_refused(coded: tuple) -> None:
    model, data = coded
    header, payload = unpack(data)
    payload = payload.copy()
    payload[-1] = 0
    with pytest.raises(CompressionError, match="payload that is no ANS stack"):
        decompress(model, pack(header, payload))


def test_every_file_written_holds_a_payload_bit_per_image(coded: tuple) -> None:
    header, _ = unpack(coded[1])
    assert 32 * header.payload_words >= header.count


# --- CIFAR-10 archives ---------------------------------------------------------------------------------

def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz written member by member; ``None`` data writes the header alone (a lying size)."""
    raw = io.BytesIO()
    for info, data in members:
        raw.write(info.tobuf(tarfile.GNU_FORMAT))
        if data is not None:
            raw.write(data + b"\0" * (-len(data) % 512))
    raw.write(b"\0" * 1024)
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=6))
    return path


def _zeros_member(name: str, size: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    return info, bytes(size)


def test_the_cifar_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cifar_mod.MAX_MEMBER_BYTES == 64 * MiB and cifar_mod.MAX_ARCHIVE_BYTES == 256 * MiB
    assert 31_035_704 < cifar_mod.MAX_MEMBER_BYTES  # a real batch fits


def test_a_tar_member_declaring_a_huge_size_is_refused_unread(tmp_path: Path) -> None:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 10**10  # the header says 10 GB; nothing follows
    archive = _tar_gz(tmp_path / "cifar-10-python.tar.gz", [(info, None)])
    with bounded(16 * MiB), pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz:cifar-10-batches-py/"
                                                          r"data_batch_1: 10000000000 bytes, more than a CIFAR-10 "
                                                          r"batch can be \(at most 67108864"):
        cifar_mod.load_cifar10(archive, "train")


def test_a_gzip_bomb_is_refused_after_a_bounded_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar_mod, "MAX_MEMBER_BYTES", 1 * MiB)
    monkeypatch.setattr(cifar_mod, "MAX_ARCHIVE_BYTES", 4 * MiB)
    # a batch that inflates past the member cap: refused on its header
    archive = _tar_gz(tmp_path / "a.tar.gz", [_zeros_member("cifar-10-batches-py/data_batch_1", 2 * MiB)])
    with bounded(3 * MiB), pytest.raises(DataError, match=r"data_batch_1: 2097152 bytes, more than"):
        cifar_mod.load_cifar10(archive, "train")
    # 12 MiB of zeros (12 KB of gzip) before the batches: the stream stops at the archive cap
    archive = _tar_gz(tmp_path / "b.tar.gz", [_zeros_member("cifar-10-batches-py/junk", 12 * MiB)])
    assert archive.stat().st_size < 100_000
    with bounded(6 * MiB), pytest.raises(DataError, match=r"b\.tar\.gz: unpacks to more than 4194304 bytes"):
        cifar_mod.load_cifar10(archive, "train")
    # a GNU long-name header of 12 MiB: tarfile reads such a header whole, so it too must meet the cap
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 12 * MiB
    archive = _tar_gz(tmp_path / "c.tar.gz", [(info, bytes(12 * MiB))])
    with bounded(10 * MiB), pytest.raises(DataError, match=r"c\.tar\.gz: unpacks to more than 4194304 bytes"):
        cifar_mod.load_cifar10(archive, "train")


def test_an_oversized_batch_file_in_a_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar_mod, "MAX_MEMBER_BYTES", 1 * MiB)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(bytes(8 * MiB))
    with bounded(3 * MiB), pytest.raises(DataError, match=r"data_batch_1: 8388608 bytes, more than"):
        cifar_mod.load_cifar10(folder, "train")


class _HugeArray:
    """Pickles as numpy's own ``_reconstruct(ndarray, (10**12,), b'b')``: a terabyte asked for in 60 bytes."""

    def __reduce__(self) -> tuple:
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (10**12,), b"b")


def test_a_pickle_asking_for_a_huge_array_is_refused() -> None:
    payload = pickle.dumps(_HugeArray(), protocol=2)
    assert len(payload) < 200
    with bounded(16 * MiB), pytest.raises(DataError, match=r"refused to unpickle \('_reconstruct' asked for "
                                                           r"1000000000000 bytes"):
        cifar_mod.safe_unpickle(payload, "data_batch_1")


# --- LSUN LMDB values and decompression bombs ------------------------------------------------------------

def _png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of ``width`` × ``height`` zeros, compressed row by row (~1 KB per 10⁶ pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_on_its_header() -> None:
    assert decode_mod.MAX_IMAGE_PIXELS == 89_478_485  # PIL's own default, where PIL only warns
    bomb = _png_bomb(10_000, 9_000)  # 9·10⁷ pixels: PIL warns and decodes (90 MB grey, 270 MB as RGB)
    assert len(bomb) < 200_000
    for check in ("header", "decode"):
        with bounded(32 * MiB), pytest.raises(DataError, match=r"db\[key b'k'\]: 10000×9000 pixels, more than the "
                                                              r"89478485 an image may have"):
            decode_mod.check_image(bomb, "db[key b'k']", 8, check)  # type: ignore[arg-type]
    with bounded(32 * MiB), pytest.raises(DataError, match="10000×9000 pixels"):
        decode_mod.decode_image(bomb, "db[key b'k']", 8, 3)


def test_an_oversized_lmdb_value_or_bomb_names_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lmdb = pytest.importorskip("lmdb")
    assert lsun_mod.MAX_VALUE_BYTES == 64 * MiB
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(4):
            txn.put(f"k{i}".encode(), _png_bomb(300, 300))
    env.close()
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(DataError, match=r"db\[key b'k\d'\]: 300×300 pixels, more than the 50000"):
        LMDBImageDataset(tmp_path / "db", 8, 3, split="train", held_out_fraction=0.25)
    monkeypatch.setattr(lsun_mod, "MAX_VALUE_BYTES", 60)
    with pytest.raises(DataError, match=r"db\[key b'k\d'\]: a value of \d+ bytes, more than an encoded image may be "
                                        r"\(at most 60"):
        LMDBImageDataset(tmp_path / "db", 8, 3, split="train", held_out_fraction=0.25)


# --- pickles: the opcode pre-scan of ddpm.untrusted_pickle -----------------------------------------------

def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)  # LONG_BINPUT


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)  # LONG_BINGET


def _tuple_dag(depth: int) -> bytes:
    """Opcodes leaving t_depth on the stack, t_0 = 0, t_{i+1} = (t_i, t_i): 2^depth leaves in ~11 bytes a level."""
    ops = b"K\x00" + _put(0)
    for i in range(depth):
        ops += _get(i) + b"\x86" + _put(i + 1)  # TUPLE2 of the t_i below and t_i again from the memo
    return ops


def _list_dag(depth: int) -> bytes:
    """The same with lists memoized before they are filled (a scan must see what they hold at the end)."""
    ops = b"K\x00" + _put(0) + b"0"
    for i in range(depth):
        ops += b"]" + _put(i + 1) + b"(" + _get(i) + _get(i) + b"e0"  # EMPTY_LIST, PUT, MARK, GETs, APPENDS, POP
    return ops + _get(depth)


def _torch_file_with_pickle(path: Path, pkl: bytes) -> Path:
    """A torch zip file (torch.save's records, stored) whose data.pkl is ``pkl``."""
    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return path


def _legacy_file_with_pickle(path: Path, pkl: bytes) -> Path:
    """A legacy torch file (five pickles, then raw storages) whose fourth pickle, the object, is ``pkl``."""
    buf = io.BytesIO()
    torch.save({}, buf, _use_new_zipfile_serialization=False)
    data, stream, ends = buf.getvalue(), io.BytesIO(buf.getvalue()), []
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    path.write_bytes(data[:ends[2]] + pkl + data[ends[3]:])
    return path


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_a_weight_file_whose_pickle_shares_parts_exponentially_is_refused(tmp_path: Path, form: str) -> None:
    """{t_22: 0} in 300 bytes: weights_only loading hashed the key's 2^22 tuples (depth 28: 95 s, 40: forever)."""
    pkl = b"\x80\x02}" + _tuple_dag(22) + b"K\x00s."
    make = _torch_file_with_pickle if form == "zip" else _legacy_file_with_pickle
    path = make(tmp_path / "w.bin", pkl)
    assert path.stat().st_size < 2048
    with bounded(16 * MiB, seconds=10), pytest.raises(CheckpointError, match=r"w\.bin(:.*data\.pkl)?: a pickled "
                                                                         r"object refers to shared parts so often"):
        safe_torch_load(path)


def test_a_non_tensor_entry_is_shown_briefly(tmp_path: Path) -> None:
    """The refusal printed the offending keys whole: here a tuple of 20,000 ints (~130 KB of message)."""
    torch.save({tuple(range(20_000)): torch.zeros(1), "w": torch.zeros(1)}, tmp_path / "w.bin")
    with pytest.raises(CheckpointError, match=r"w\.bin holds 1 non-tensor entries \[\(0, 1, 2, 3, \.\.\.\)\]") as e:
        safe_torch_load(tmp_path / "w.bin")
    assert len(str(e.value)) < 400


def test_real_state_dicts_pass_the_pickle_scan_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = build_model(TINY_UNET).state_dict()
    shared = torch.arange(64.0)
    views = {f"view{i}": shared[i:i + 8] for i in range(50)}  # one storage, re-used from the memo 49 times
    for legacy in (False, True):
        for weights in (state, views):
            torch.save(weights, tmp_path / "w.bin", _use_new_zipfile_serialization=not legacy)
            loaded = safe_torch_load(tmp_path / "w.bin")
            assert list(loaded) == list(weights) and all(torch.equal(loaded[k], weights[k]) for k in weights)
    batch = {b"batch_label": b"x", b"data": np.zeros((100, 3072), np.uint8), b"labels": [i % 10 for i in range(100)],
             b"filenames": [b"a.png"] * 100}  # one bytes object, re-used from the memo 99 times
    for protocol in (2, 4, 5):
        check_pickle(pickle.dumps(batch, protocol=protocol), "batch")


@pytest.mark.parametrize(("pkl", "message"), [
    (b"\x80\x02" + _tuple_dag(40) + b".", r"spans more than \d+ objects from \d+ opcodes"),
    (b"\x80\x02" + _list_dag(40) + b".", r"spans more than \d+ objects"),
    (b"\x80\x02K\x00" + b"\x85" * 10_000 + b".", rf"nests more than {MAX_DEPTH} levels"),  # hashed recursively, in C
    (b"\x80\x02" + b"]" * 10_000 + b"a" * 9_999 + b".", rf"nests more than {MAX_DEPTH} levels"),
    (b"\x80\x02]" + _put(0) + _get(0) + b"a.", "contains itself"),
    (b"\x80\x02" + _get(7) + b".", r"damaged or malformed pickle \(KeyError"),
    (b"\x80\x02(K\x01K\x02", r"damaged or malformed pickle \(ValueError"),  # truncated: no STOP
    (b"\x80\x02a.", r"damaged or malformed pickle \(IndexError"),  # APPEND to nothing
    (b"\x80\x02" + b"N0" * 600 + b"N.", r"more than 1000 pickle opcodes"),
], ids=["tuple_dag", "list_dag_filled_after_memo", "deep_tuples", "deep_lists", "cycle", "unset_memo", "truncated",
        "underflow", "too_many_opcodes"])
def test_the_pickle_scan_refuses_bombs_and_malformed_pickles(pkl: bytes, message: str) -> None:
    with bounded(8 * MiB, seconds=10), pytest.raises(DataError, match=r"^batch_1: .*" + message):
        check_pickle(pkl, "batch_1", DataError, max_ops=1000 if len(pkl) < 2000 else 100_000)


# --- diffusers directories --------------------------------------------------------------------------------

TINY_UNET = UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                       attn_resolutions=(4,), num_groups=8, dropout=0.0)


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    state = build_model(TINY_UNET).state_dict()
    return save_diffusers(tmp_path / "pipe", TINY_UNET, DiffusionConfig(T=20, beta_end=0.2, levels=17), state)


def _set_unet(pipe: Path, **fields: object) -> None:
    path = pipe / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_a_valid_pipeline_still_imports(pipeline: Path) -> None:
    assert load_diffusers(pipeline).model == TINY_UNET


@pytest.mark.parametrize(("fields", "message"), [
    ({"sample_size": 10**6}, r"unet config sample_size=1000000; expected an integer in 1\.\.4096"),
    ({"sample_size": "32"}, r"unet config sample_size='32'; expected an integer"),
    ({"layers_per_block": 10**6}, r"unet config layers_per_block=1000000; expected an integer in 1\.\.64"),
    ({"block_out_channels": [16] * 100}, r"unet config block_out_channels=\[16, .*…; expected a list of 1\.\.16"),
    ({"block_out_channels": [16, 2**40]}, r"unet config block_out_channels=1099511627776; expected an integer"),
    ({"norm_num_groups": 0}, r"unet config norm_num_groups=0"),
], ids=["sample_size_1e6", "sample_size_str", "layers_per_block_1e6", "100_levels", "width_2e40", "groups_0"])
def test_unet_fields_that_size_the_network_are_bounded(pipeline: Path, fields: dict, message: str) -> None:
    _set_unet(pipeline, **fields)
    with bounded(32 * MiB), pytest.raises(DiffusersFormatError, match=message):
        load_diffusers(pipeline)


def test_num_train_timesteps_is_bounded(pipeline: Path) -> None:
    path = pipeline / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_train_timesteps": 10**9, "trained_betas": None}))
    with bounded(16 * MiB), pytest.raises(DiffusersFormatError, match=r"num_train_timesteps=1000000000; expected an "
                                                                    rf"integer in 1\.\.{MAX_T}"):
        load_diffusers(pipeline)


def test_widths_beyond_the_weights_are_refused_before_any_tensor_is_read(pipeline: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _set_unet(pipeline, block_out_channels=[65536, 65536], norm_num_groups=8)  # ~300 GB of float32
    monkeypatch.setattr(diff_mod, "safe_torch_load", lambda *a, **k: pytest.fail("a tensor was read"))
    with bounded(32 * MiB), pytest.raises(DiffusersFormatError, match="shape mismatch"):
        load_diffusers(pipeline)


def test_deeply_nested_config_json_is_a_format_error(pipeline: Path) -> None:
    (pipeline / "unet" / "config.json").write_text("{\"a\": " + "[" * 100_000)
    with deadline(10), pytest.raises(DiffusersFormatError, match=r"config\.json nests JSON deeper than 64"):
        load_diffusers(pipeline)


def test_a_bin_zip_that_inflates_past_the_config_is_refused(pipeline: Path) -> None:
    weights = pipeline / "unet" / "diffusion_pytorch_model.safetensors"
    state = state_dict_to_diffusers(build_model(TINY_UNET).state_dict(), TINY_UNET)
    weights.unlink()
    bin_path = pipeline / "unet" / "diffusion_pytorch_model.bin"
    torch.save(state, bin_path)
    assert load_diffusers(pipeline).model == TINY_UNET  # a plain .bin loads
    with zipfile.ZipFile(bin_path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        prefix = z.namelist()[0].split("/")[0]
        z.writestr(f"{prefix}/data/9999", bytes(16 * MiB))  # 16 MiB of zeros, ~16 KB in the zip
    assert bin_path.stat().st_size < 2 * MiB
    with bounded(16 * MiB), pytest.raises(CheckpointError, match=r"zip records unpack to \d+ bytes, more than the "
                                                                r"\d+ bytes allowed"):
        load_diffusers(pipeline)


def test_a_compressed_bin_is_refused_before_it_inflates(pipeline: Path, tmp_path: Path) -> None:
    """32 MiB of zeros deflate to 32 KB; wide widths in config.json made the byte cap derived from it ~1 TB."""
    _set_unet(pipeline, block_out_channels=[65536, 65536], norm_num_groups=8)
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    raw = tmp_path / "raw.bin"
    torch.save({"conv_in.weight": torch.zeros(8 * MiB)}, raw)
    bin_path = pipeline / "unet" / "diffusion_pytorch_model.bin"
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(bin_path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    raw.unlink()
    assert bin_path.stat().st_size < 256 * 1024
    with bounded(16 * MiB), pytest.raises(CheckpointError, match=r"zip record '.*' is compressed \(method 8\); "
                                                                r"torch\.save stores every record as is"):
        load_diffusers(pipeline)
    with bounded(16 * MiB), pytest.raises(CheckpointError, match=r"is compressed"):
        safe_torch_load(bin_path, max_bytes=1 << 40)
