"""EC2 instance metadata (IMDSv2: a session token first, then GETs)."""

from __future__ import annotations

import urllib.error
import urllib.request

from agent.errors import BackupAgentError

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 300


class MetadataUnavailable(BackupAgentError):
    """Not on EC2, IMDS disabled, or the path does not exist."""


class Imds:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, timeout: float = 2.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None

    def get(self, path: str) -> str:
        """The text at `latest/meta-data/<path>`."""
        request = urllib.request.Request(  # noqa: S310 - fixed http endpoint, never user input
            f"{self.endpoint}/latest/meta-data/{path.lstrip('/')}",
            headers={"X-aws-ec2-metadata-token": self._session_token()},
        )
        return self._fetch(request, path)

    def instance_id(self) -> str:
        return self.get("instance-id")

    def availability_zone(self) -> str:
        return self.get("placement/availability-zone")

    def region(self) -> str:
        return self.get("placement/region")

    def block_device_mapping(self) -> dict[str, str]:
        """Mapping name (`ami`, `root`, `ebs2`) → device name as EC2 knows it (`sdf`)."""
        names = [n.strip() for n in self.get("block-device-mapping/").splitlines() if n.strip()]
        return {name: self.get(f"block-device-mapping/{name}").strip() for name in names}

    def _session_token(self) -> str:
        if self._token is None:
            request = urllib.request.Request(  # noqa: S310 - fixed http endpoint
                f"{self.endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
            )
            self._token = self._fetch(request, "api/token")
        return self._token

    def _fetch(self, request: urllib.request.Request, what: str) -> str:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return str(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MetadataUnavailable(f"instance metadata {what}: {exc}") from None
