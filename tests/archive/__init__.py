"""Tests of the archive on Ray: planning, units, storage (local and S3), jobs, restore, kills, portability."""
