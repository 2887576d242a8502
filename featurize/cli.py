"""`featurize`: read a corpus in place and extract features into the Zarr store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from featurize import DEFAULT_STORE
from featurize.cli_support import EXIT_DATA, common_options, friendly, run_app, set_help

# Heavy modules (zarr, numpy, the extractors, dask) are imported inside the commands: `featurize --help`
# must not pay for them.
app = typer.Typer(help="Extract speech and text features into a chunked Zarr store, once.", no_args_is_help=True,
                  rich_markup_mode=None)
common_options(app, "featurize")
console = Console(stderr=True)

CORPUS_HELP = "corpus reader (`featurize extract --help` lists them)"


def parse_options(pairs: list[str], flag: str = "--option") -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"{flag} wants key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def reader_options(corpus: str, name: str | None, columns: str | None) -> dict:
    """--name / --columns for the readers of described corpora (manifest, lhotse cuts)."""
    if corpus not in ("manifest", "lhotse"):
        if name or columns:
            raise typer.BadParameter(f"--name and --columns apply to manifest and lhotse corpora, not {corpus!r}")
        return {}
    out: dict = {}
    if name:
        if "/" in name or not name.strip():
            raise typer.BadParameter(f"--name {name!r} prefixes every utterance id as NAME/...: give it without a /")
        out["corpus"] = name
    if columns:
        pairs = parse_options(columns.split(","), "--columns")
        out["columns"] = pairs
    return out


def make_extractor(model: str, options: dict[str, object]):
    """The extractor, or a usage error naming the option and what it accepts."""
    from featurize.extractors import OptionError, build_extractor
    from featurize.registry import UnknownName

    try:
        return build_extractor(model, options)
    except (OptionError, UnknownName) as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
@friendly
def extract(
    corpus: str = typer.Option(..., help=CORPUS_HELP),
    data: Path = typer.Option(..., help="corpus location (directory, or manifest CSV/JSONL)"),
    model: str = typer.Option(..., help="extractor (`featurize models` lists them)"),
    name: str = typer.Option(None, help="manifest / lhotse: the corpus name that prefixes ids (default: file stem)"),
    columns: str = typer.Option(None, help="manifest / lhotse: where the fields are, e.g. path=wav,label=emo"),
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
    workers: int = typer.Option(max(1, (os.cpu_count() or 2)), min=1, help="CPU worker processes"),
    model_id: str = typer.Option(None, help="Hugging Face hub id of the encoder (neural extractors)"),
    model_path: Path = typer.Option(None, help="local directory of the encoder (neural extractors)"),
    layers: str = typer.Option(None, help="hidden layers to store, e.g. 0-12 or 9,12 (neural extractors)"),
    device: str = typer.Option(None, help="cpu | cuda (default: cuda when present)"),
    batch_seconds: float = typer.Option(60.0, min=0.1, help="audio seconds per batch for batched extractors"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="extractor option key=value (repeatable), e.g. -o set=egemaps for opensmile"
    ),
    limit: int = typer.Option(None, min=1, help="extract at most this many utterances (for a quick try)"),
    dry_run: bool = typer.Option(False, help="print the plan and the disk estimate, extract nothing"),
    lock_timeout: float = typer.Option(
        None, min=0, help="seconds to wait when another process is writing this feature (default: wait; 0: refuse)"),
    scheduler: str = typer.Option(
        None, help="compute on a dask.distributed cluster: local:N (N worker processes here) or tcp://HOST:PORT"),
) -> None:
    """Extract one feature for a corpus. Re-running resumes; a changed configuration makes a new group.
    Two extractions may share a store: different features run side by side, the same feature waits.
    Every skipped file is named, kept in the store (`featurize ls --skips`) and ends the run with status 3."""
    from featurize.corpora import read_corpus
    from featurize.pipeline import human_bytes, preview, run_extraction
    from featurize.store import FeatureStore

    opts: dict[str, object] = dict(parse_options(option))
    for key, value in (("model_id", model_id), ("model_path", model_path), ("layers", layers), ("device", device)):
        if value is not None:
            opts[key] = str(value)
    extractor = make_extractor(model, opts)  # options checked before the corpus is read
    if scheduler:
        from featurize.cluster import check_scheduler

        check_scheduler(scheduler)
    elif hasattr(extractor, "device_opt"):  # computed here: a device asked for must be here (a cluster's workers check)
        from featurize.extractors.neural import pick_device

        pick_device(extractor.device_opt)
    utts, report = read_corpus(corpus, data, **reader_options(corpus, name, columns))
    console.print(f"{corpus}: {len(utts)} utterances read from {data} ({report.summary()})")
    print_skips(report.entries())
    if not dry_run:  # a dry run writes nothing: not the store, not its reading record, not the group
        fs = FeatureStore(store, lock_timeout=lock_timeout)
        fs.record_reading(f"{corpus} {Path(data).resolve()}", report.entries())
    if not utts:
        console.print(f"[red]error[/] no utterance could be read from {data}")
        raise typer.Exit(code=EXIT_DATA)
    if dry_run:
        p = preview(store, utts, extractor, limit=limit)
        console.print(
            f"{extractor.describe()}: {len(p.todo)} to extract, {p.already_done} stored; "
            f"disk estimate up to {human_bytes(p.estimate_bytes)} before compression"
        )
        return
    client = None
    if scheduler:
        from featurize.cluster import connect

        client = connect(scheduler)
        console.print(f"computing on {scheduler}: {len(client.scheduler_info(n_workers=-1)['workers'])} workers")
    try:
        result = run_extraction(fs, utts, extractor, workers=workers, batch_seconds=batch_seconds, console=console,
                                limit=limit, client=client)
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)  # a LocalCluster this command started
            client.close()
            if cluster is not None:
                cluster.close()
    seconds = max(result.seconds, 1e-9)
    # text-only corpora have no audio seconds to count: their rate is utterances per second
    rate = (f"{result.audio_seconds / seconds:.1f} audio-s/s" if result.audio_seconds > 0
            else f"{result.processed / seconds:.1f} utt/s")
    console.print(
        f"[green]done[/] {result.feature}: {result.processed} extracted in {result.seconds:.1f} s "
        f"({rate}), {result.already_done} were already stored, "
        f"{len(result.skipped)} skipped, complete={result.complete}"
    )
    if result.skipped or report.n_skipped:
        raise typer.Exit(code=EXIT_DATA)


def print_skips(entries: list[tuple[str, str]], limit: int = 20) -> None:
    for what, reason in entries[:limit]:
        console.print(f"  [yellow]skipped[/] {what}: {reason}", markup=True, highlight=False)
    if len(entries) > limit:
        console.print(f"  ... and {len(entries) - limit} more (`featurize ls --skips` lists them all)")


@app.command()
@friendly
def transcribe(
    corpus: str = typer.Option(..., help=CORPUS_HELP),
    data: Path = typer.Option(..., help="corpus location (directory, or manifest CSV/JSONL)"),
    name: str = typer.Option(None, help="manifest / lhotse: the corpus name that prefixes ids (default: file stem)"),
    columns: str = typer.Option(None, help="manifest / lhotse: where the fields are, e.g. path=wav,label=emo"),
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
    model_path: str = typer.Option(None, help="CTranslate2 Whisper directory, or base / tiny.en (the models "
                                   "`make models` installs; default tiny.en)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    compute_type: str = typer.Option(None, help="CTranslate2 compute type (default int8 on cpu, float16 on cuda)"),
    beam_size: int = typer.Option(5, min=1, help="beam size (1 = greedy, faster)"),
    workers: int = typer.Option(1, min=1, help="utterances decoded at once (faster-whisper num_workers)"),
    threads: int = typer.Option(0, min=0, help="CPU threads per worker (0: cores / workers)"),
    language: str = typer.Option(None, help="language code (default: en for *.en models, else detected)"),
    limit: int = typer.Option(None, min=1, help="transcribe at most this many utterances (for a quick try)"),
    force: bool = typer.Option(False, help="redo utterances that already have ASR words"),
) -> None:
    """Whisper ASR words with start/end times into the store's utterance table (forced alignments are kept)."""
    from featurize.asr import Transcriber, transcribe_store
    from featurize.corpora import read_corpus
    from featurize.store import FeatureStore

    utts, report = read_corpus(corpus, data, **reader_options(corpus, name, columns))
    console.print(f"{corpus}: {len(utts)} utterances read from {data} ({report.summary()})")
    print_skips(report.entries())
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    model = Transcriber(str(model_path) if model_path else None, device=device, compute_type=compute_type,
                        beam_size=beam_size, threads=threads, workers=workers, language=language)
    result = transcribe_store(FeatureStore(store), utts, model, workers=workers, force=force, limit=limit,
                              console=console)
    rate = result.audio_seconds / max(result.seconds, 1e-9)
    console.print(f"[green]done[/] {result.transcribed} transcribed in {result.seconds:.1f} s ({rate:.1f} audio-s/s), "
                  f"{result.already} already had ASR words, {result.kept_alignment} kept forced alignments, "
                  f"{len(result.failed)} failed")
    for uid, reason in list(result.failed.items())[:20]:
        console.print(f"  [yellow]failed[/] {uid}: {reason}")
    if result.wer_utterances:
        print(f"WER vs corpus transcripts: {100 * result.wer:.2f}% ({result.wer_utterances} utterances)")
    for name in result.stale:
        console.print(f"  [yellow]stale[/] {name}: its words changed; the next `featurize extract` of it rebuilds it")
    if result.failed:
        raise typer.Exit(code=EXIT_DATA)


@app.command("ls")
@friendly
def list_features(
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
    skips: bool = typer.Option(False, help="list every skipped file or utterance, with its reason"),
) -> None:
    """List stored features: arrays, shapes, sizes, completeness (or, with --skips, what was skipped)."""
    from featurize.pipeline import human_bytes
    from featurize.store import FeatureStore

    fs = FeatureStore(store, create=False)
    out = Console(width=None if sys.stdout.isatty() else 160)
    if skips:
        table = Table("where", "what", "reason")
        for where, what, reason in fs.skips():
            table.add_row(where, what, reason)
        out.print(table)
        return
    utts = fs.utterances()
    by_corpus: dict[str, int] = {}
    for u in utts:
        by_corpus[u.corpus] = by_corpus.get(u.corpus, 0) + 1
    out.print(f"{store}: {len(utts)} utterances ({', '.join(f'{c} {n}' for c, n in sorted(by_corpus.items()))})")
    table = Table("feature", "arrays (row shape, dtype)", "utterances", "complete", "on disk", "created")
    for info in fs.features():
        arrays = "; ".join(f"{k} {s.kind} {tuple(s.tail)} {s.dtype}" for k, s in info.arrays.items())
        table.add_row(
            info.name,
            arrays,
            str(info.n_committed),
            f"STALE: {info.stale}" if info.stale else ("yes" if info.complete else "no"),
            human_bytes(info.nbytes_stored),
            info.created,
        )
    out.print(table)


@app.command()
@friendly
def verify(
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
    feature: list[str] = typer.Option([], help="feature(s) to check (default: every one)"),
    repair: bool = typer.Option(False, help="un-commit exactly the damaged utterances (the next extract redoes them)"),
) -> None:
    """Read every committed chunk and check checksums, offsets, ids and counts; exit 1 on damage."""
    from featurize.store import FeatureStore

    fs = FeatureStore(store, create=False)
    names = [fs.resolve_feature(f) for f in feature] or [i.name for i in fs.features()]
    out = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("feature", "utterances", "chunks read", "checksums", "problems", "damaged utterances")
    table_ids = {u.utt_id for u in fs.utterances()}
    checks = [fs.verify(name, table_ids) for name in names]
    for c in checks:
        shown = ", ".join(c.damaged[:4]) + (f" and {len(c.damaged) - 4} more" if len(c.damaged) > 4 else "")
        table.add_row(c.feature, str(c.n_committed), str(c.chunks), "yes" if c.checksummed else "no (older group)",
                      "; ".join(c.problems) or "none", shown or "-")
    for name, why in fs.ignored.items():
        table.add_row(name, "-", "-", "-", why, "-")
    out.print(table)
    damaged = [c for c in checks if not c.ok]
    if not damaged and not fs.ignored:
        out.print(f"{store}: {len(checks)} feature(s), no damage")
        return
    if not repair:
        out.print(f"{store}: damage in {len(damaged) + len(fs.ignored)} feature group(s); "
                  f"`featurize verify --store {store} --repair` un-commits the damaged utterances"
                  + (" and removes the groups set aside" if fs.ignored else ""))
        raise typer.Exit(code=1)
    for c in damaged:
        n = fs.repair(c.feature, c)
        out.print(f"repaired {c.feature}: {n} utterance(s) un-committed; `featurize extract` redoes them")
    for name in fs.remove_ignored():
        out.print(f"removed {name} (half made, or its metadata damaged): `featurize extract` makes it again")
    left = [c for c in (fs.verify(c.feature, table_ids) for c in damaged) if not c.ok]
    if left:
        out.print(f"still damaged after repair: {', '.join(c.feature for c in left)}")
        raise typer.Exit(code=1)


@app.command("rm")
@friendly
def remove_feature(
    feature: str = typer.Argument(..., help="the feature group's full name, as `featurize ls` shows it"),
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
) -> None:
    """Remove one feature group (e.g. an older configuration that makes a short name ambiguous). Waits for
    a writer of that feature to finish; other features and the utterance table are untouched."""
    from featurize.pipeline import human_bytes
    from featurize.store import FeatureStore, StoreError

    fs = FeatureStore(store, create=False)
    try:
        info = fs.feature_info(feature)
    except StoreError as e:  # a short or mistyped name: this command takes one group's full name
        raise typer.BadParameter(str(e), param_hint="FEATURE") from None
    fs.delete_feature(feature)
    console.print(f"removed {feature} ({info.n_committed} utterances, {human_bytes(info.nbytes_stored)}) "
                  f"from {fs.where}")


@app.command()
@friendly
def export(
    feature: str = typer.Option(..., help="feature name (e.g. fbank, opensmile_compare, minilm)"),
    out: Path = typer.Option(..., help="HDF5 file to write"),
    store: str = typer.Option(DEFAULT_STORE, help="the feature store: a directory or an fsspec URL (s3://bucket/prefix)"),
    array: list[str] = typer.Option([], help="arrays to export (default: all)"),
) -> None:
    """Copy one feature to HDF5 for other tools: /<array>/<utt_id> datasets, the config as attributes."""
    import h5py

    from featurize.store import FeatureStore

    # an earlier export is replaced; any other file under that name is the user's, and is kept
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: give the HDF5 file to write, e.g. {out / (feature + '.h5')}")
    if out.exists() and not _an_export(out):
        raise FileExistsError(f"--out {out} exists and is not a feature exported by sercache: it is left as it "
                              "is; give another --out")
    fs = FeatureStore(store, create=False)
    info = fs.feature_info(fs.resolve_feature(feature))
    name = info.name
    arrays = array or list(info.arrays)
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")  # never leave a half-written file under the real name
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["feature"] = name
            h5.attrs["config"] = json.dumps(info.config)
            for arr in arrays:
                fa = fs.read(name, arr)
                grp = h5.create_group(arr)
                for uid in fa.utt_ids:
                    grp.create_dataset(uid, data=fa.get(uid), compression="gzip" if fa.offsets is not None else None)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    console.print(f"exported {name} ({', '.join(arrays)}; {info.n_committed} utterances) to {out}")


def _an_export(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file `featurize export` wrote (its attributes name the feature and config)."""
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as h5:
        return "feature" in h5.attrs and "config" in h5.attrs


@app.command()
@friendly
def models() -> None:
    """List the extractors: name, what it reads, what it stores, its options."""
    import inspect

    from featurize.extractors import EXTRACTORS

    table = Table("name", "reads", "kind", "options (-o key=value)")
    for name in EXTRACTORS.names():
        cls = EXTRACTORS.get(name)
        params = [f"{k}={p.default}" for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"]
        kind = "batched (GPU when present)" if cls.batched else "per utterance (CPU workers)"
        doc = (inspect.getdoc(inspect.getmodule(cls)) or "").splitlines()[0]
        table.add_row(name, cls.needs, kind, ", ".join(params))
        table.add_row("", "", "", f"[dim]{doc}[/]")
    Console().print(table)


def fill_help(group) -> None:
    """Names from the registries into the options' help, only when a command's --help is shown."""
    from featurize.corpora import READERS
    from featurize.extractors import EXTRACTORS

    models = ", ".join(EXTRACTORS.names())
    corpora = " | ".join(READERS.names())
    set_help(group, "extract", "model", f"extractor: {models} (`featurize models` describes each)")
    for command in ("extract", "transcribe"):
        set_help(group, command, "corpus", f"corpus reader: {corpora}")


def main() -> None:
    run_app(app, fill_help)


if __name__ == "__main__":
    main()
