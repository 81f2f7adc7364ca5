"""Search-space entries of a study file: fixed values, choices, numbers and integers, each with its
optional ``when`` condition (the forms are listed in ``geoloc/study/studyfile.py``'s docstring)."""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from geoloc.common.validation import FieldError, Float, Section

# Optuna warns at every read of a choice among lists that it cannot vouch for such values in a
# storage; they are plain JSON and round-trip exactly (tests/test_recovery.py, the pareto case).
warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be a tuple of None")

# -- search-space entries ----------------------------------------------------------------------


class _Entry(Section):
    """What every search-space entry has."""

    name: str = Field(exclude=True)
    """The dotted run-configuration key (the entry's key in ``search_space``)."""
    when: dict[str, list] = Field(default_factory=dict)
    """Earlier entries' names -> the values for which this entry is sampled (a scalar is a one-element list)."""

    @field_validator("when", mode="before")
    @classmethod
    def _as_lists(cls, when: Any) -> Any:
        if when is None:
            return {}
        return {k: v if isinstance(v, list) else [v] for k, v in when.items()} if isinstance(when, dict) else when

    def applies(self, sampled: dict) -> bool:
        """True when every ``when`` condition holds for the values sampled so far."""
        return all(sampled.get(key) in allowed for key, allowed in self.when.items())

    def extremes(self) -> list:
        """The values that validation tries: bounds or every choice."""
        raise NotImplementedError

    def yaml_form(self) -> Any:
        """The entry as written in a study file."""
        data = self.model_dump(mode="json")
        when = data.pop("when")
        return data | {"when": when} if when else data


class FixedEntry(_Entry):
    """A value set in every trial (``train.lr: 3.0e-4`` is short for ``{type: fixed, value: 3.0e-4}``)."""

    type: Literal["fixed"]
    """Always "fixed"."""
    value: Any
    """The value."""

    def extremes(self) -> list:
        return [self.value]

    def yaml_form(self) -> Any:
        return self.value if not self.when else super().yaml_form()


class ChoiceEntry(_Entry):
    """One of a list of values (the only kind a grid search takes). A value may be a list
    (``model.rff_scales``, ``model.freeze``): Optuna stores it as JSON and reads it back equal."""

    type: Literal["choice"]
    """Always "choice"."""
    values: list[Any] = Field(min_length=1)
    """The values, a non-empty list."""

    def extremes(self) -> list:
        return list(self.values)


class FloatEntry(_Entry):
    """A number drawn between ``low`` and ``high``, uniformly or uniformly in its logarithm."""

    type: Literal["uniform", "loguniform"]
    """"uniform", or "loguniform" (uniform in the logarithm)."""
    low: Float
    """Lower bound (loguniform: > 0)."""
    high: Float
    """Upper bound, > low."""

    @property
    def log(self) -> bool:
        return self.type == "loguniform"

    @model_validator(mode="after")
    def _bounds(self) -> FloatEntry:
        if not self.low < self.high:
            raise ValueError(f"needs low < high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise FieldError("low", f"loguniform needs low > 0, got {self.low}")
        return self

    def extremes(self) -> list:
        return [self.low, self.high]


class IntEntry(_Entry):
    """An integer drawn from ``low, low + step, ..., high``."""

    type: Literal["int"]
    """Always "int"."""
    low: StrictInt
    """Lower bound."""
    high: StrictInt
    """Upper bound, > low."""
    step: StrictInt = Field(1, ge=1)
    """Spacing of the values."""

    @model_validator(mode="before")
    @classmethod
    def _integer_bounds(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(isinstance(data.get(k), float) for k in ("low", "high", "step")):
            raise ValueError("int needs integer low, high and step")
        return data

    @model_validator(mode="after")
    def _bounds(self) -> IntEntry:
        if not self.low < self.high:
            raise ValueError(f"needs low < high, got low={self.low} high={self.high}")
        return self

    def extremes(self) -> list:
        return [self.low, self.high]


Entry = Annotated[FixedEntry | ChoiceEntry | FloatEntry | IntEntry, Field(discriminator="type")]
"""One search-space entry, told apart by its ``type``."""
