"""backup-agent: a second, independent copy of S3 buckets on a local volume."""

__version__ = "0.1.0"
