"""The `dpflows` command: demo city, ingestion, serving and admin tasks."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from dpflows.errors import DpflowsError


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """demo-city and ingest (dpflows.demo, dpflows.ingest)."""


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    """serve and admin (dpflows.service, api)."""


def _add_audit_commands(sub: argparse._SubParsersAction) -> None:
    """audit-verify and audit-digest (dpflows.audit): check the hash chain, sign its daily head."""
    verify = sub.add_parser("audit-verify", help="walk the audit hash chain; exit 1 at the first broken row",
                            description="Walk the audit log's hash chain from its first row. With --digest and "
                                        "--key-file, also check a signed daily digest against the ledger.")
    verify.add_argument("--ledger-url", required=True, help="sqlite:///PATH or postgresql://...")
    verify.add_argument("--digest", help="a digest file written by audit-digest, to check as well")
    verify.add_argument("--key-file", help="the admin's digest key (needed with --digest)")
    verify.set_defaults(run=_run_audit_verify)

    digest = sub.add_parser("audit-digest", help="print an HMAC-signed digest of the chain head at the end of a day",
                            description="Sign the audit chain head at the end of a UTC day with an admin-held key; "
                                        "store the printed JSON away from the ledger's host.")
    digest.add_argument("--ledger-url", required=True, help="sqlite:///PATH or postgresql://...")
    digest.add_argument("--day", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD (UTC)")
    digest.add_argument("--key-file", required=True, help="file holding a random key of at least 32 bytes")
    digest.set_defaults(run=_run_audit_digest)


def _run_audit_verify(args: argparse.Namespace) -> int:
    from dpflows.audit import read_key_file, verify_audit, verify_digest
    from dpflows.errors import InvalidInput
    from dpflows.ledger import open_ledger

    if (args.digest is None) != (args.key_file is None):
        raise InvalidInput("--digest and --key-file go together; give both or neither", field="digest")
    ledger = open_ledger(args.ledger_url)
    try:
        report = verify_audit(ledger)
        out: dict[str, object] = {"chain": report.to_json()}
        ok = report.ok
        if args.digest is not None:
            try:
                with open(args.digest, encoding="utf-8") as fh:
                    doc = json.load(fh)
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"digest file {args.digest!r} is not readable JSON ({type(exc).__name__})",
                                   field="digest") from exc
            check = verify_digest(ledger, doc, read_key_file(args.key_file))
            out["digest"] = check.to_json()
            ok = ok and check.ok
    finally:
        ledger.close()
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


def _run_audit_digest(args: argparse.Namespace) -> int:
    from dpflows.audit import daily_digest, read_key_file
    from dpflows.ledger import open_ledger

    key = read_key_file(args.key_file)
    ledger = open_ledger(args.ledger_url)
    try:
        print(json.dumps(daily_digest(ledger, args.day, key), indent=2))
    finally:
        ledger.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpflows", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_service_commands(sub)
    _add_audit_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DpflowsError as exc:
        print(f"dpflows: error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
