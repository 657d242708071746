"""EBS volume id discovery from a faked /proc and /sys (and IMDS on loopback)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from agent.imds import Imds
from agent.storage.volume_id import VolumeIdUnknown, discover_volume_id, mount_of

ROOT_LINE = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n"


def fake_host(tmp_path: Path, mount_lines: str) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(ROOT_LINE + mount_lines)
    sys_root = tmp_path / "sys"
    (sys_root / "block").mkdir(parents=True)
    (sys_root / "class" / "block").mkdir(parents=True)
    (sys_root / "dev" / "block").mkdir(parents=True)
    return proc, sys_root


def add_disk(sys_root: Path, name: str, number: str, serial: str | None = None) -> Path:
    """A disk the way sysfs shows it: devices/…/<name>, with block/, class/block/, dev/block/."""
    device = sys_root / "devices" / "pci0000:00" / "nvme" / name
    (device / "device").mkdir(parents=True)
    if serial is not None:
        (device / "device" / "serial").write_text(serial + "\n")
    _link(sys_root / "block" / name, device)
    _link(sys_root / "class" / "block" / name, device)
    _link(sys_root / "dev" / "block" / number, device)
    return device


def add_partition(sys_root: Path, disk: Path, name: str, number: str) -> None:
    part = disk / name
    part.mkdir()
    (part / "partition").write_text("1\n")
    _link(sys_root / "class" / "block" / name, part)
    _link(sys_root / "dev" / "block" / number, part)


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs has, so it resolves inside the fake tree."""
    link.symlink_to(os.path.relpath(target, link.parent))


def test_nvme_serial_of_the_mounted_disk_is_the_volume_id(tmp_path):
    proc, sys_root = fake_host(
        tmp_path, "41 27 259:3 / /mnt/backups rw,noatime shared:30 - xfs /dev/nvme1n1 rw\n"
    )
    add_disk(sys_root, "nvme0n1", "259:0", "vol0aaaaaaaaaaaaaaaa")
    add_disk(sys_root, "nvme1n1", "259:3", "vol0123456789abcdef0")
    found = discover_volume_id(Path("/mnt/backups"), proc_root=proc, sys_root=sys_root)
    assert found == "vol-0123456789abcdef0"


def test_a_partition_and_a_subdirectory_resolve_to_the_whole_disk(tmp_path):
    proc, sys_root = fake_host(tmp_path, "41 27 259:4 / /mnt/backups rw - ext4 /dev/nvme1n1p1 rw\n")
    disk = add_disk(sys_root, "nvme1n1", "259:3", "vol0fedcba9876543210")
    add_partition(sys_root, disk, "nvme1n1p1", "259:4")
    found = discover_volume_id(Path("/mnt/backups/agent"), proc_root=proc, sys_root=sys_root)
    assert found == "vol-0fedcba9876543210"


def test_device_mapper_with_one_disk_below_is_followed(tmp_path):
    proc, sys_root = fake_host(
        tmp_path, "41 27 253:0 / /srv/backup\\040copies rw - ext4 /dev/mapper/vg-backups rw\n"
    )
    add_disk(sys_root, "nvme2n1", "259:5", "vol0bbbbbbbbbbbbbbbb")
    dm = add_disk(sys_root, "dm-0", "253:0")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "nvme2n1").mkdir()
    found = discover_volume_id(Path("/srv/backup copies"), proc_root=proc, sys_root=sys_root)
    assert found == "vol-0bbbbbbbbbbbbbbbb"


def test_the_innermost_mount_wins(tmp_path):
    proc, _ = fake_host(
        tmp_path,
        "41 27 259:3 / /mnt rw - ext4 /dev/nvme1n1 rw\n"
        "42 41 259:6 / /mnt/backups rw - xfs /dev/nvme2n1 rw\n",
    )
    assert mount_of(Path("/mnt/backups/x"), proc).source == "/dev/nvme2n1"
    assert mount_of(Path("/mnt/other"), proc).source == "/dev/nvme1n1"


def test_the_configured_id_wins_without_looking(tmp_path):
    assert (
        discover_volume_id(
            tmp_path, configured="vol-0123456789abcdef0", proc_root=tmp_path / "nothing"
        )
        == "vol-0123456789abcdef0"
    )


def test_no_serial_and_no_metadata_says_to_set_the_config(tmp_path):
    proc, sys_root = fake_host(tmp_path, "41 27 202:80 / /mnt/backups rw - ext4 /dev/xvdf rw\n")
    add_disk(sys_root, "xvdf", "202:80")
    with pytest.raises(VolumeIdUnknown) as caught:
        discover_volume_id(Path("/mnt/backups"), proc_root=proc, sys_root=sys_root)
    assert "storage.volume_id" in caught.value.problems[0]
    assert "xvdf has no EBS serial" in caught.value.problems[0]


# -- the instance metadata fallback (Xen instances: /dev/xvdf, no serial) ------------------


@pytest.fixture
def imds_server() -> Iterator[tuple[str, dict[str, str]]]:
    """A loopback IMDSv2: PUT a token, then GETs that must carry it."""
    paths: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            self._reply(200, "token-123" if self.path == "/latest/api/token" else "")

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
                self._reply(401, "")
                return
            prefix = "/latest/meta-data/"
            key = self.path[len(prefix) :]
            self._reply(200, paths[key]) if key in paths else self._reply(404, "")

        def _reply(self, status, text):
            self.send_response(status)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()


def test_metadata_and_describe_volumes_find_a_xen_disk(tmp_path, imds_server, monkeypatch):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    endpoint, paths = imds_server
    proc, sys_root = fake_host(tmp_path, "41 27 202:80 / /mnt/backups rw - ext4 /dev/xvdf rw\n")
    add_disk(sys_root, "xvdf", "202:80")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
        other = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        backups = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        ec2.attach_volume(VolumeId=other, InstanceId=instance["InstanceId"], Device="/dev/sdg")
        ec2.attach_volume(VolumeId=backups, InstanceId=instance["InstanceId"], Device="/dev/sdf")
        paths.update(
            {
                "instance-id": instance["InstanceId"],
                "block-device-mapping/": "ami\nebs1\nebs2\nroot",
                "block-device-mapping/ami": "/dev/sda1",
                "block-device-mapping/root": "/dev/sda1",
                "block-device-mapping/ebs1": "sdf",
                "block-device-mapping/ebs2": "sdg",
            }
        )
        found = discover_volume_id(
            Path("/mnt/backups"), proc_root=proc, sys_root=sys_root, imds=Imds(endpoint), ec2=ec2
        )
    assert found == backups
