"""`dfguard` command line. Imports stay inside the commands so `dfguard --help` starts fast."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dfguard_client import ScoreResult as RemoteResult

    from service.schemas import ScoreResult

API_KEY_ENV = "DFGUARD_API_KEY"  # the client's key; not DFG_-prefixed, so never read as a server setting


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (argparse reports anything else, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {value}")
        return value

    return parse


def _print_error(args: argparse.Namespace, code: str, message: str) -> None:
    if args.json:
        _print_json({"error": {"code": code, "message": message}})
    else:
        print(f"dfguard: {code}: {message}", file=sys.stderr)


def _print_result(args: argparse.Namespace, result: ScoreResult | RemoteResult) -> None:
    """The `score` output, whoever scored: the JSON document, or the two-line summary."""
    if args.json:
        _print_json(result.model_dump(mode="json"))
        return
    m = result.media
    score = "n/a" if result.score is None else f"{result.score:.3f}"
    seconds = f", {m.duration_s:.1f} s" if m.duration_s else ""
    pictured = (
        ""
        if m.kind == "audio"
        else f"; {result.frames_sampled} frames sampled, {result.faces_detected} faces, "
        f"{result.crops_scored} crops classified; model {result.model.name} {result.model.version}"
    )
    size = "" if m.kind == "audio" else f" {m.width}x{m.height}"
    print(
        f"{args.path}: {result.decision.upper()} (score {score}; {', '.join(result.reasons)})\n"
        f"  {m.kind}{size}{seconds}{pictured}; {result.timings_ms.total:.0f} ms"
    )
    a = result.audio
    if a is not None:
        verdict = (a.decision or "no decision").upper()
        speech_score = "n/a" if a.score is None else f"{a.score:.3f}"
        print(
            f"  speech: {verdict} (score {speech_score}; {', '.join(a.reasons)}); "
            f"{a.speech_seconds:.1f} s of speech, {len(a.windows)} window(s); "
            f"model {a.model.name} {a.model.version}"
        )


def _score_remote(args: argparse.Namespace) -> int:
    """`score --server`: the gateway scores, with the output and exit codes of local scoring."""
    import os

    try:
        from dfguard_client import Client, DfguardError
    except ImportError:
        _print_error(args, "internal_error", "--server needs dfguard-client (pip install ./clients/python)")
        return 1
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        with Client(args.server, api_key=key) as client:
            result = client.score(args.path)
    except DfguardError as exc:
        _print_error(args, exc.code, exc.message)
        return 2 if exc.status is not None and exc.status < 500 else 1
    except OSError as exc:  # the file cannot be read here: what local scoring reports
        _print_error(args, "media_not_found", f"cannot read {args.path}: {exc.strerror or exc}")
        return 2
    except ValueError as exc:  # --server is not an http(s) URL
        _print_error(args, "invalid_request", str(exc))
        return 2
    _print_result(args, result)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    if args.server:
        return _score_remote(args)
    from service.config import Settings
    from service.errors import ModerationError

    try:
        settings = Settings()
        from service.media import PendingMedia

        # One-shot process: fork the decoder now, while this process is still single-purpose, and load the
        # models while it decodes (a forkserver would cost an extra interpreter start).
        pending = PendingMedia(args.path, settings, start_method="fork")
        try:
            from service.compose import build_pipeline

            # One video, one caller: no micro-batcher; the decoder is already forked.
            pipeline = build_pipeline(settings, batching=False, warm_decoder=False)
        except BaseException:
            pending.close()
            raise
        result = pipeline.score_pending(pending)
    except ModerationError as exc:
        _print_error(args, exc.code, exc.message)
        return 2 if exc.http_status < 500 else 1
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure as a typed error, never a traceback
        message = f"{type(exc).__name__}: {exc}"
        if args.json:
            _print_json({"error": {"code": "internal_error", "message": message}})
        print(f"dfguard: internal_error: {message}", file=sys.stderr)
        return 1
    _print_result(args, result)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app
    from service.api.server import server_config
    from service.config import Settings
    from service.logs import configure

    configure()
    settings = Settings()
    app = create_app(settings, with_worker=args.with_worker)
    config = server_config(app, settings, args.host, args.port, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()
    return 0


def _cmd_worker(_: argparse.Namespace) -> int:
    import signal

    from service.config import Settings
    from service.logs import configure
    from service.worker import build_worker
    from service.worker.server import WorkerServer

    configure()
    settings = Settings()
    worker = build_worker(settings)
    server = None
    if settings.worker_metrics_port:
        server = WorkerServer(worker, settings.worker_metrics_host, settings.worker_metrics_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    finally:
        if server is not None:
            server.close()
    return 0


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.logs import configure
    from service.worker.replay import ReplayFilter, replay

    configure()
    report = replay(
        Settings(),
        ReplayFilter.from_args(
            codes=args.code,
            since=args.since,
            until=args.until,
            partition=args.partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
        ),
        dry_run=args.dry_run,
        group=args.group,
    )
    _print_json(report.model_dump(mode="json"))
    return 0


def _cmd_rescore(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from service.compose import build_pipeline
    from service.config import Settings
    from service.errors import ModerationError
    from service.logs import configure
    from service.rescore import Rescorer, RescoreRefused, check_settings, parse_model, parse_when
    from service.store import DecisionStore, brief_error
    from service.store.revisions import Selection

    configure()
    settings = Settings()
    name, version = parse_model(args.model)
    try:
        selection = Selection(
            since=parse_when(args.since),
            until=parse_when(args.until),
            decisions=frozenset(args.decision),
            model_name=name,
            model_version=version,
            tenant=args.tenant,
            limit=args.limit,
            after_id=args.after_id,
        )
        check_settings(settings)  # before loading any model
    except ValueError as exc:  # a bad --since/--until, or RescoreRefused
        _print_error(args, "invalid_request", str(exc))
        return 2
    # lazy: a store that is down or behind is reported below, like every other failure of the run
    store = DecisionStore(settings.database_url, migrate=settings.database_migrate_on_start, lazy=True)
    try:
        # One caller: no micro-batcher (as `dfguard score`).
        rescorer = Rescorer(settings, build_pipeline(settings, batching=False), store, dry_run=args.dry_run)
        try:
            report = rescorer.run(selection)
        finally:
            rescorer.close()
    except RescoreRefused as exc:
        _print_error(args, "invalid_request", str(exc))
        return 2
    except ModerationError as exc:  # a dependency down: what is done stays done, a rerun resumes
        _print_error(args, exc.code, f"rescore stopped: {exc.message}")
        return 1
    except (SQLAlchemyError, KafkaError) as exc:
        code = "store_unavailable" if isinstance(exc, SQLAlchemyError) else "kafka_unavailable"
        _print_error(args, code, f"rescore stopped: {brief_error(exc)}")
        return 1
    finally:
        store.close()
    status = 1 if report.failed else 0  # a Kubernetes Job retries; a rerun redoes only what is left
    if args.json:
        _print_json(report.model_dump(mode="json"))
        return status
    r = report
    print(
        f"{'dry run: ' if r.dry_run else ''}{r.selected} selected, {r.rescored} rescored, "
        f"{r.changed} changed, {r.unchanged} unchanged, {r.current} current, {r.follows_original} reposts, "
        f"{r.skipped_no_uri} without URI, {r.missing_media} missing media, {r.media_changed} media changed, "
        f"{r.failed} failed; {r.emitted} events emitted ({r.resumed} resumed); "
        f"{r.pending} revisions were pending in the outbox; "
        f"last id {r.last_id if r.last_id is not None else '-'} (--after-id to continue)"
    )
    for c in r.changes:
        print(f"  {c.tenant}/{c.video_id}: {c.before} -> {c.after} (revision {c.revision})")
    for ref in r.no_uri:
        print(f"  {ref.tenant}/{ref.video_id}: no source URI, skipped")
    for problem in [*r.missing, *r.changed_media, *r.failures]:
        print(f"  {problem.tenant}/{problem.video_id}: {problem.code}: {problem.message}")
    return status


def _cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.config import Settings
    from service.store import brief_error
    from service.store.decisions import engine_for
    from service.store.migrate import current, head, new_revision, upgrade

    if args.db_command == "revision":
        print(f"wrote {new_revision(args.message, autogenerate=not args.empty)}: review it before committing")
        return 0
    url = args.url or Settings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    engine = engine_for(url)
    try:
        if args.db_command == "upgrade":
            done = upgrade(engine)
            adopted = " (tables made by create_all adopted as 0001)" if done.stamped_legacy else ""
            print(f"{shown}: {done.before or 'empty'} -> {done.after} (head){adopted}")
            return 0
        at, newest = current(engine), head()
        print(f"{shown}: {at or 'no revision'}" + (" (head)" if at == newest else f" (head is {newest})"))
        return 0 if at == newest else 3
    except SQLAlchemyError as exc:
        print(f"dfguard: store_unavailable: {shown}: {brief_error(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _cmd_schemas(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.events import write_json_schemas

    for path in write_json_schemas(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _cmd_triton_build_repo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.compose import choose_audio_model
    from service.config import Settings
    from service.models import DEFAULT_ENSEMBLE, resolve_models
    from service.triton.repo import RepoOptions, build_repo

    settings = Settings()
    named = [Path(p) for p in args.models] or list(settings.model_paths) or [DEFAULT_ENSEMBLE]
    manifests = resolve_models(named).member_paths  # an ensemble manifest serves its members
    shadow_named = [Path(p) for p in args.shadow] or list(settings.shadow_model_paths)
    shadow = resolve_models(shadow_named).member_paths if shadow_named else []
    # The audio model is served unless audio is off: its member, the one the gateway would load.
    audio = None
    if not args.no_audio and (args.audio or settings.audio_enabled):
        audio = Path(args.audio) if args.audio else choose_audio_model(settings)
    options = RepoOptions(
        max_batch_size=settings.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_us,
        instances=args.instances,
        cpu_threads=settings.inference_threads,
    )
    out = build_repo(
        manifests,
        Path(args.out),
        args.target,
        options,
        copy_models=not args.configs_only,
        shadow_paths=shadow,
        audio_path=audio,
    )
    with_shadow = f" and a shadow ensemble of {len(shadow)}" if shadow else ""
    with_audio = f", with the audio model {audio}" if audio else ""
    print(
        f"wrote the {args.target} model repository for {len(manifests)} model(s){with_shadow}{with_audio} "
        f"to {out}"
    )
    return 0


def _cmd_models_import(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from service.models.importer import import_checkpoint
    from service.models.mesonet import MesoNetFileError, import_mesonet

    manifests = []
    for ckpt in map(Path, args.checkpoints):
        name = args.name if args.name and len(args.checkpoints) == 1 else None
        name = name or re.sub(r"[^a-z0-9._-]+", "-", f"{args.family}-{ckpt.stem}".lower()).strip("-")
        out, version, threads = Path(args.out) / name, args.version, args.threads
        try:
            if args.family == "meso":
                licence = Path(args.licence_dir) if args.licence_dir else None
                res = import_mesonet(
                    ckpt,
                    out,
                    name=name,
                    version=version,
                    arch=args.arch,
                    licence_dir=licence,
                    threads=threads,
                )
            else:
                res = import_checkpoint(ckpt, args.family, out, name=name, version=version, threads=threads)
        except ImportError as exc:  # torch, h5py: the `training` extra, never in serving images
            print(f"dfguard: models import needs the training extra (pip install 'dfguard[training]'): {exc}")
            return 2
        except MesoNetFileError as exc:
            print(f"dfguard: models import: {exc}", file=sys.stderr)
            return 2
        manifests.append(str(res.manifest))
        diff = res.parity_max_abs_diff
        print(f"imported {ckpt} -> {res.manifest} ({res.bytes} bytes; ONNX vs PyTorch max diff {diff:.2e})")
    print("serve with: DFG_MODEL_PATHS='" + json.dumps(manifests) + "'")
    return 0


def _cmd_models_diff(args: argparse.Namespace) -> int:
    """`models diff`: the store's shadow results in a window, or (`--folder`) both model lists on labelled
    media. Exit 0 with a report, 2 on bad input, 1 when the store cannot be read or scoring breaks."""
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service import models_diff as md
    from service.config import Settings
    from service.errors import ModerationError
    from service.store import brief_error
    from service.store.decisions import engine_for

    report: md.StoreDiff | md.FolderDiff
    try:
        if args.limit < 0:
            raise md.DiffInputError("--limit must be 0 or more")
        settings = Settings()
        if args.folder:
            from service.models import DEFAULT_ENSEMBLE

            if not args.labels:
                raise md.DiffInputError("--folder needs --labels (a CSV of filename,label, or metadata.json)")
            if (
                args.since
                or args.until
                or args.tenant
                or args.source
                or args.database_url
                or args.primary_model
                or args.shadow_model
            ):
                raise md.DiffInputError(
                    "--since, --until, --tenant, --source, --primary-model, --shadow-model, --database-url "
                    "read the store"
                )
            primary = [Path(p) for p in args.primary] or list(settings.model_paths) or [DEFAULT_ENSEMBLE]
            candidate = [Path(p) for p in args.candidate] or list(settings.shadow_model_paths)
            if not candidate:
                raise md.DiffInputError("--folder needs --candidate manifests (or DFG_SHADOW_MODEL_PATHS)")
            report = md.folder_diff(
                Path(args.folder), Path(args.labels), primary, candidate, settings, limit=args.limit
            )
        else:
            if args.labels or args.primary or args.candidate:
                raise md.DiffInputError("--labels, --primary and --candidate go with --folder")
            window = md.window_from(args.since, args.until)
            primary_model = md.ModelFilter.parse(args.primary_model) if args.primary_model else None
            shadow_model = md.ModelFilter.parse(args.shadow_model) if args.shadow_model else None
            url = args.database_url or settings.database_url
            try:
                parsed = make_url(url)
            except ArgumentError:
                raise md.DiffInputError("--database-url is not an SQLAlchemy URL") from None
            shown = parsed.render_as_string(hide_password=True)
            if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
                _print_error(args, "store_unavailable", f"{shown}: no such database file")  # not made here
                return 1
            engine = engine_for(url)
            try:
                report = md.store_diff(
                    engine,
                    window,
                    tenant=args.tenant,
                    source=args.source,
                    primary_model=primary_model,
                    shadow_model=shadow_model,
                    limit=args.limit,
                )
            except (SQLAlchemyError, md.StoreSchemaError) as exc:
                detail = brief_error(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
                _print_error(args, "store_unavailable", f"{shown}: {detail}")
                return 1
            finally:
                engine.dispose()
    except md.DiffInputError as exc:
        _print_error(args, "invalid_request", str(exc))
        return 2
    except ModerationError as exc:  # a manifest that cannot be loaded, a backend that is down
        _print_error(args, exc.code, exc.message)
        return 2 if exc.http_status < 500 else 1
    except Exception as exc:  # noqa: BLE001 - reported as a typed error, never a traceback
        _print_error(args, "internal_error", f"{type(exc).__name__}: {exc}")
        return 1
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        print(md.render_folder(report) if isinstance(report, md.FolderDiff) else md.render_store(report))
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from service.config import Settings
    from service.evidence.links import LinkGrant, signed_url
    from service.store import DecisionStore, brief_error

    s = Settings()
    if args.evidence_command == "link":
        if not s.evidence_link_secret:
            print("dfguard: invalid_request: DFG_EVIDENCE_LINK_SECRET is not set", file=sys.stderr)
            return 2
        subject: Literal["decision", "job"] = "job" if args.job else "decision"
        expires = int(time.time() + (args.ttl or s.evidence_retention_seconds))
        print(
            signed_url(
                s.public_url, s.evidence_link_secret, LinkGrant(subject, args.id, args.tenant, expires)
            )
        )
        return 0
    try:
        store = DecisionStore(s.database_url, migrate=s.database_migrate_on_start)
        try:
            print(f"purged {store.purge_evidence()} expired evidence item(s)")
        finally:
            store.close()
    except SQLAlchemyError as exc:
        print(f"dfguard: store_unavailable: {brief_error(exc)}", file=sys.stderr)
        return 1
    return 0


def _cmd_version(_: argparse.Namespace) -> int:
    from service import __version__

    print(__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfguard", description="Deepfake moderation: score media for face manipulation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score one video or image file (no server needed)")
    score.add_argument(
        "path",
        help="video (mp4, mov, webm, mkv, avi) or image (jpeg, png, webp); with --server also an http(s) URL",
    )
    score.add_argument("--json", action="store_true", help="print the full result as one JSON object")
    score.add_argument(
        "--server", metavar="URL", help="score through a running gateway (http://host:8080), not locally"
    )
    score.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the gateway's API key for --server (default: ${API_KEY_ENV}; the env is safer)",
    )
    score.set_defaults(func=_cmd_score)
    serve = sub.add_parser("serve", help="run the HTTP gateway (FastAPI under uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--with-worker", action="store_true", help="also run the Kafka worker in this process (small setups)"
    )
    serve.set_defaults(func=_cmd_serve)
    worker = sub.add_parser("worker", help="run the Kafka worker (videos.uploaded -> moderation.flags)")
    worker.set_defaults(func=_cmd_worker)
    db = sub.add_parser("db", help="decision store schema migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("upgrade", "upgrade the schema to the newest revision (safe while services run)"),
        ("current", "print the schema's revision; exit 3 if it is not the newest"),
    ):
        cmd = db_sub.add_parser(name, help=text)
        cmd.add_argument("--url", help="SQLAlchemy URL (default: DFG_DATABASE_URL)")
        cmd.set_defaults(func=_cmd_db)
    rev = db_sub.add_parser("revision", help="development: the next migration, from service/store/tables.py")
    rev.add_argument("-m", "--message", required=True, help="what the revision changes")
    rev.add_argument("--empty", action="store_true", help="an empty revision (data moves), not autogenerated")
    rev.set_defaults(func=_cmd_db)
    dlq = sub.add_parser("dlq", help="dead-letter topic tools")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    rep = dlq_sub.add_parser(
        "replay",
        help="re-publish dead-lettered records to the uploads topic (original key, value and headers)",
        description="Re-publish records of DFG_KAFKA_DLQ_TOPIC to DFG_KAFKA_UPLOADS_TOPIC. Progress is kept "
        "by a consumer group on the DLQ, so a rerun continues where the last one stopped; a record replayed "
        "more than DFG_DLQ_MAX_REPLAYS times is refused. Prints a JSON report.",
    )
    rep.add_argument(
        "--code",
        action="append",
        default=[],
        help="replay records with this error code (repeatable); default: transient and dependency faults",
    )
    rep.add_argument("--since", help="only records dead-lettered at or after this ISO 8601 time")
    rep.add_argument("--until", help="only records dead-lettered before this ISO 8601 time")
    rep.add_argument("--partition", type=int, help="only this partition of the DLQ topic")
    rep.add_argument("--from-offset", type=int, help="only DLQ offsets at or above this one")
    rep.add_argument("--to-offset", type=int, help="only DLQ offsets at or below this one")
    rep.add_argument("--group", help="consumer group keeping the progress (default DFG_DLQ_REPLAY_GROUP_ID)")
    rep.add_argument("--dry-run", action="store_true", help="report what would be replayed; publish nothing")
    rep.set_defaults(func=_cmd_dlq_replay)
    rescore = sub.add_parser(
        "rescore",
        help="re-decide stored worker decisions with the current models; emit the changed ones as revisions",
        description="Fetch the media of the selected worker decisions again (their source URI), decide them "
        "with the current models and thresholds, and store and produce each changed decision as its next "
        "revision (flag events schema v2, `revision` and `supersedes`), exact reposts following. "
        "Restartable: a rerun first produces what an interrupted run stored, and skips decisions already "
        "decided by the current models and thresholds.",
    )
    rescore.add_argument("--since", help="only decisions decided at or after this ISO 8601 time")
    rescore.add_argument("--until", help="only decisions decided before this ISO 8601 time")
    rescore.add_argument(
        "--decision", action="append", default=[], choices=["allow", "review", "flag"], help="repeatable"
    )
    rescore.add_argument("--model", help="only decisions of this model: NAME or NAME:VERSION")
    rescore.add_argument("--tenant", help="only this tenant's decisions")
    rescore.add_argument(
        "--limit", type=_at_least(1), help="at most this many decisions (oldest first); see --after-id"
    )
    rescore.add_argument(
        "--after-id",
        type=_at_least(0),
        help="only decisions with a higher id: the previous batch's `last_id`, so batches walk the table",
    )
    rescore.add_argument(
        "--dry-run", action="store_true", help="report what would change; store and emit nothing"
    )
    rescore.add_argument("--json", action="store_true", help="print the report as JSON")
    rescore.set_defaults(func=_cmd_rescore)
    schemas = sub.add_parser("schemas", help="write the JSON Schemas of the Kafka event contracts")
    schemas.add_argument("out", nargs="?", default="docs/schemas")
    schemas.set_defaults(func=_cmd_schemas)
    triton = sub.add_parser("triton", help="Triton Inference Server helpers")
    triton_sub = triton.add_subparsers(dest="triton_command", required=True)
    build = triton_sub.add_parser("build-repo", help="generate the model repository from model manifests")
    build.add_argument("--target", choices=["gpu", "cpu"], required=True)
    build.add_argument("--out", default="model_repository")
    build.add_argument(
        "--models", nargs="*", default=[], help="manifests (default: DFG_MODEL_PATHS or bundled)"
    )
    build.add_argument(
        "--shadow", nargs="*", default=[], help="shadow_ensemble manifests (default: DFG_SHADOW_MODEL_PATHS)"
    )
    build_audio = build.add_mutually_exclusive_group()
    build_audio.add_argument(
        "--audio", help="audio model manifest (default: DFG_AUDIO_MODEL_PATH, else the bundled one)"
    )
    build_audio.add_argument("--no-audio", action="store_true", help="no audio model member")
    build.add_argument("--max-queue-delay-us", type=int, default=2000)
    build.add_argument("--instances", type=int, default=1)
    build.add_argument("--configs-only", action="store_true", help="gpu: no ONNX copies (committed layout)")
    build.set_defaults(func=_cmd_triton_build_repo)
    models = sub.add_parser("models", help="model helpers")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    imp = models_sub.add_parser(
        "import", help="convert published checkpoints to ONNX + manifest (needs torch)"
    )
    imp.add_argument("checkpoints", nargs="+", help="checkpoint files (.pth/.pt/.tar/.h5), one model each")
    imp.add_argument(
        "--family",
        choices=["dfdc", "sbi", "meso"],
        required=True,
        help="dfdc: 1st place B7; sbi: SBI B4; meso: MesoNet Keras HDF5 (Meso4 or MesoInception4)",
    )
    imp.add_argument(
        "--arch", choices=["meso4", "mesoinception4"], help="meso: the architecture the file must hold"
    )
    imp.add_argument(
        "--licence-dir", help="meso: folder with MesoNet's LICENSE and NOTICE (default: found near the file)"
    )
    imp.add_argument("--out", default="models", help="a sub-directory per model is written here")
    imp.add_argument("--name", help="model name (one checkpoint only; default: family + file name)")
    imp.add_argument("--version", default="imported")
    imp.add_argument("--threads", type=int, default=2, help="CPU threads for the export and the parity check")
    imp.set_defaults(func=_cmd_models_import)
    diff = models_sub.add_parser(
        "diff",
        help="primary vs candidate models: the store's shadow results, or a labelled folder (--folder)",
        description="Without --folder: the shadow results stored in a time window, as a confusion matrix of "
        "primary vs shadow decisions and the media whose decision would change. With --folder: score the "
        "labelled media with both model lists and report AUC, log loss (DFDC), decision shares and changes.",
    )
    diff.add_argument("--json", action="store_true", help="print one JSON document")
    diff.add_argument("--limit", type=int, default=50, help="changed media to list (the total is given)")
    diff.add_argument("--since", help="store: ISO 8601 time or a span back from now (24h, 7d); default 24h")
    diff.add_argument("--until", help="store: ISO 8601 time or a span back from now; default now")
    diff.add_argument("--tenant", help="store: only this tenant")
    diff.add_argument("--source", choices=["worker", "gateway"], help="store: only this scoring path")
    diff.add_argument(
        "--primary-model", help="store: only this primary, NAME or NAME:VERSION (the table's model names)"
    )
    diff.add_argument("--shadow-model", help="store: only this shadow, NAME or NAME:VERSION")
    diff.add_argument("--database-url", help="store: SQLAlchemy URL (default: DFG_DATABASE_URL)")
    diff.add_argument("--folder", help="offline: a folder of media named by --labels")
    diff.add_argument("--labels", help="offline: CSV of filename,label (0/1, real/fake) or metadata.json")
    diff.add_argument(
        "--primary", nargs="+", default=[], help="offline: manifests (default: DFG_MODEL_PATHS or bundled)"
    )
    diff.add_argument(
        "--candidate", nargs="+", default=[], help="offline: manifests (default: DFG_SHADOW_MODEL_PATHS)"
    )
    diff.set_defaults(func=_cmd_models_diff)
    evidence = sub.add_parser("evidence", help="reviewers' evidence pages: signed links, retention")
    evidence_sub = evidence.add_subparsers(dest="evidence_command", required=True)
    link = evidence_sub.add_parser(
        "link", help="print a signed, expiring link to a decision's (or job's) evidence page"
    )
    link.add_argument("id", help="the video id (or, with --job, the job id)")
    link.add_argument("--tenant", required=True, help="the tenant the evidence belongs to")
    link.add_argument("--job", action="store_true", help="a gateway job's evidence, not a worker decision's")
    link.add_argument(
        "--ttl", type=float, default=None, help="seconds the link is valid (default: the evidence retention)"
    )
    link.set_defaults(func=_cmd_evidence)
    purge = evidence_sub.add_parser("purge", help="delete expired evidence now (the services also do it)")
    purge.set_defaults(func=_cmd_evidence)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
