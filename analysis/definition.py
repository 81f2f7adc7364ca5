"""What a study folder says about the study itself: its study file and its metric registry.

- ``study.yaml``, the study as the launcher resolved it, validated by ``geoloc.study.studyfile``
  into a ``StudyConfig``: the base configuration, the search space, the scheduler and the
  objective are read from it, never from the raw YAML. A folder without one (hand-made), or with
  one that no longer validates (written by another version), is analysed from its trials alone:
  no base values, no ASHA rungs, no Pareto objective; the latter case with a warning.
- ``metrics.json``, the registry the launcher stored (``geoloc.common.metrics``): what each
  metric key means. It is read, never rebuilt; a folder written before it existed falls back to
  the study file's registry (``StudyConfig.registry``), else to the default task's defaults, with
  a warning saying which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from geoloc.common.metrics import MetricRegistry
from geoloc.common.validation import ConfigError
from geoloc.study.config import parse_job, registry_of
from geoloc.study.folders import StudyFolder
from geoloc.study.studyfile import StudyConfig, load_study_file


@dataclass(frozen=True)
class Definition:
    config: StudyConfig | None  # the validated study.yaml; None without a valid one
    registry: MetricRegistry
    warnings: list[str] = field(default_factory=list)


def read_definition(folder: StudyFolder) -> Definition:
    """The study file and the registry of the study in ``folder`` (module docstring)."""
    warnings: list[str] = []
    config = _study_file(folder, warnings)
    return Definition(config, _registry(folder, config, warnings), warnings)


def _study_file(folder: StudyFolder, warnings: list[str]) -> StudyConfig | None:
    path = folder.path / StudyFolder.STUDY
    if not path.is_file():
        return None
    try:
        return load_study_file(path)
    except ConfigError as exc:
        warnings.append(
            f"{StudyFolder.STUDY} is not a valid study file ({str(exc).removeprefix(f'{path}: ')}); the study is "
            "read from its trials alone (no base values, scheduler rungs or Pareto objective)"
        )
        return None


def _registry(folder: StudyFolder, config: StudyConfig | None, warnings: list[str]) -> MetricRegistry:
    """The folder's metrics.json; else the study file's registry, else the defaults, with a warning."""
    path = folder.path / StudyFolder.REGISTRY
    if path.exists():
        try:
            return MetricRegistry.load(path)
        except (OSError, ValueError, TypeError) as exc:
            problem = f"unreadable {StudyFolder.REGISTRY} ({type(exc).__name__})"
    else:
        problem = f"no {StudyFolder.REGISTRY} (a study written before it existed, or a hand-made folder)"
    if config is not None:
        registry, source = config.registry, StudyFolder.STUDY
    else:
        registry, source = registry_of(parse_job({})), f"the defaults (no readable {StudyFolder.STUDY})"
    warnings.append(f"{problem}; metrics taken from {source}: {describe(registry)}")
    return registry


def describe(registry: MetricRegistry) -> str:
    """What a registry holds, in words: its accuracy thresholds and evaluation sets, else its keys."""
    thresholds = sorted({m.threshold_km for m in registry if m.kind == "accuracy" and m.threshold_km is not None})
    sets = list(dict.fromkeys(m.eval_set for m in registry if m.eval_set is not None))
    parts = [f"thresholds {', '.join(f'{t:g}' for t in thresholds)} km"] if thresholds else []
    parts += [f"evaluation sets {', '.join(sets)}"] if sets else []
    return ", ".join(parts) or "metrics " + ", ".join(m.key for m in registry)
