"""The cross-view retrieval task (Sample4Geo): ground queries matched against aerial references."""
