"""The champion rule: when a newly registered version takes the `champion` alias."""

from __future__ import annotations

from typing import Optional

from mlflow.exceptions import MlflowException

METRIC_TAG_PREFIX = "metric."
CHAMPION = "champion"
CHALLENGER = "challenger"


def tag_value(value: float) -> str:
    """A metric as written in a version's `metric.*` tag: the shortest text that reads back as the
    same float (full precision: 0.3 -> "0.3", never rounded)."""
    return repr(float(value))


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
    # Full precision on both sides: `old` is the champion run's own metric (not its rounded tag).
    if new_value > old + margin:
        return True, (f"{metric} = {new_value:.4f} beats champion version {champion['version']} "
                      f"({old:.4f}) by {new_value - old:+.4f} > margin {margin:.4f}")
    return False, (f"{metric} = {new_value:.4f} does not beat champion version {champion['version']} "
                   f"({old:.4f}) by more than margin {margin:.4f} (difference {new_value - old:+.4f})")


def champion_info(client, name: str, metric: str) -> Optional[dict]:
    """The champion version, its primary metric at full precision (the metric of the run it was
    registered from; the version's rounded `metric.*` tag only when that run has none) and run id."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias
    value: Optional[float] = None
    source = None
    if mv.run_id:
        try:  # the value the run held when the version was made (a run may log the metric again later)
            history = [m for m in client.get_metric_history(mv.run_id, metric)
                       if m.timestamp <= (mv.creation_timestamp or m.timestamp)]
            if history:
                value = float(max(history, key=lambda m: (m.timestamp, m.step)).value)
                source = "run"
        except MlflowException:
            value = None  # the run was deleted: fall back to the tag
    if value is None:
        raw = (mv.tags or {}).get(METRIC_TAG_PREFIX + metric)
        try:
            value = float(raw) if raw is not None else None
            source = "tag" if value is not None else None
        except ValueError:
            value = None
    return {"version": int(mv.version), "value": value, "run_id": mv.run_id, "value_source": source}
