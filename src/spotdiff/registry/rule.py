"""The champion rule: when a newly registered version takes the `champion` alias."""

from __future__ import annotations

from typing import Optional

from mlflow.exceptions import MlflowException

METRIC_TAG_PREFIX = "metric."
CHAMPION = "champion"
CHALLENGER = "challenger"


def tag_value(value: float) -> str:
    """A metric as written in a version's `metric.*` tag (6 significant digits)."""
    return f"{value:.6g}"


def decide(new_value: float, champion: Optional[dict], margin: float, floor: float,
           metric: str) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why (one sentence)."""
    if new_value < floor:
        return False, (f"{metric} = {new_value:.4f} is below register.ap_floor = {floor:.4f}; "
                       "not promoted")
    if champion is None:
        return True, f"no current champion; {metric} = {new_value:.4f} reaches the floor {floor:.4f}"
    old = champion.get("value")
    if old is None:
        return False, (f"the current champion (version {champion['version']}) has no recorded {metric}; "
                       "kept it — promote by hand with `spotdiff promote VERSION` if wanted")
    # Compared at the precision the champion's value was recorded at: the same model measured again
    # is not an improvement.
    if float(tag_value(new_value)) > old + margin:
        return True, (f"{metric} = {new_value:.4f} beats champion version {champion['version']} "
                      f"({old:.4f}) by {new_value - old:+.4f} > margin {margin:.4f}")
    return False, (f"{metric} = {new_value:.4f} does not beat champion version {champion['version']} "
                   f"({old:.4f}) by more than margin {margin:.4f} (difference {new_value - old:+.4f})")


def champion_info(client, name: str, metric: str) -> Optional[dict]:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias
    raw = (mv.tags or {}).get(METRIC_TAG_PREFIX + metric)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        value = None
    return {"version": int(mv.version), "value": value, "run_id": mv.run_id}
