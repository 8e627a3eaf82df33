"""Scheduled retraining: rerun the pipeline only when the profile's raw data changed since the
champion was trained; the pipeline then promotes the new model only if its hypervolume is higher.

    python flows/retrain.py serve                            # cron "0 3 * * 1" (Mondays 03:00)
    python flows/retrain.py serve --cron "0 4 * * *" --profile ltr-letor --set base.optim.epochs=20
    prefect deploy -n moft-retrain                           # the same, as a work-pool deployment
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow  # noqa: E402

from flows.pipeline import pipeline  # noqa: E402
from moft.champion import PROFILE_TAG, RAW_DATA_TAG, champion_version, raw_data_md5  # noqa: E402
from moft.config import ConfigError, load_config  # noqa: E402

DEFAULT_CRON = "0 3 * * 1"


@flow(name="moft-retrain", log_prints=True)
def retrain(profile: str = "ltr-mslr", overrides: list[str] | None = None) -> dict:
    """Compare the DVC md5 of ``profile``'s raw data with the one tagged on the champion version;
    run the pipeline (a subflow) when they differ or there is no champion, else skip."""
    cfg = load_config(profile, overrides or [])
    if not cfg.tracking.enabled:
        raise ConfigError("moft-retrain compares against the MLflow champion: tracking.enabled must be true")
    current = raw_data_md5(cfg)
    champion = champion_version(cfg)
    if champion is None:
        reason = "no champion yet"
    elif champion.tags.get(PROFILE_TAG) != cfg.profile:
        reason = f"the champion (v{champion.version}) is of profile {champion.tags.get(PROFILE_TAG)!r}"
    elif champion.tags.get(RAW_DATA_TAG) != current:
        previous = champion.tags.get(RAW_DATA_TAG)
        reason = f"raw data changed since champion v{champion.version}: {previous} -> {current}"
    else:
        reason = f"raw data unchanged since champion v{champion.version} ({current}): nothing to retrain"
        print(f"skipped: {reason}")
        return {"retrained": False, "reason": reason, "raw_data_md5": current}
    print(f"retraining: {reason}")
    result = pipeline(profile=profile, overrides=overrides or [], tracking=True)
    return {"retrained": True, "reason": reason, "raw_data_md5": current, **result}


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flows/retrain.py serve", description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default {DEFAULT_CRON!r})")
    parser.add_argument("--profile", default="ltr-mslr", help="profile to retrain")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value")
    args = parser.parse_args(argv)
    load_config(args.profile, args.overrides)  # a bad profile or override fails here, not at 3 am
    retrain.serve(
        name="moft-retrain",
        cron=args.cron,
        parameters={"profile": args.profile, "overrides": args.overrides},
        description="Retrain when the profile's raw data changed; promote only on a higher HV.",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2:])
    else:
        print(retrain())
