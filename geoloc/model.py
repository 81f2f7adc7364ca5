"""The published names of the design, kept stable: ``geoloc.model.LocationEncoder`` (with
``LocationEncoder.from_geoclip()``) and ``geoloc.model.GeoCLIP``. The model itself is GeoCLIP's
task's, ``geoloc/tasks/geoclip/model.py``; nothing inside the project imports this module."""

from geoloc.tasks.geoclip.model import GeoCLIP, LocationEncoder

__all__ = ["GeoCLIP", "LocationEncoder"]
