"""What every layer uses: configuration validation, atomic writes, devices and the metric record."""
