"""A second, deliberately small model kind, used only in tests: linear regression as a `Task`.

It proves the seam: it trains through `blueberry.core.loop.train`, Tune sweeps, Ray Train and MLflow
tracking with no change to the platform. It is a package (not a test module) so that Ray ships it to
workers (`conftest.ray_local` passes it as a `py_modules` entry) and importing it there registers it.
"""
