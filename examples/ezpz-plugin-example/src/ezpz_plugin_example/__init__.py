"""An example ezpz plugin: ``ezpz train forecast`` once this package is installed."""
