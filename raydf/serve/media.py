"""What an upload is, told from its first bytes (container magic numbers), never from its declared type.

The service answers 415 (unsupported media type) for bytes no video container starts
with -- a PNG, a PDF, text -- and leaves everything that does to the decoder, whose
failure on a damaged file of a known container is a 422. Each container is one entry of
:data:`CONTAINERS` (a registry: adding one touches one place; the tests loop over it).

Sources of the signatures: ISO/IEC 14496-12 (ISO BMFF ``ftyp``; QuickTime's older leading
atoms), the EBML header (RFC 8794, Matroska/WebM), RIFF ``AVI `` (Microsoft AVI), ISO/IEC
13818-1 (MPEG-TS sync byte 0x47 every 188 bytes; BDAV M2TS every 192), ISO/IEC 13818-1
pack start code ``00 00 01 BA`` (MPEG-PS) and ``00 00 01 B3`` (MPEG-1/2 video sequence
header), Adobe FLV, the ASF header GUID (WMV), RFC 3533 (Ogg), the IVF header (VP8/VP9/AV1
elementary streams), RealMedia ``.RMF``, SMPTE 377M (MXF), YUV4MPEG2, NUT and ITU-T H.264 /
H.265 Annex B elementary streams (a start code, then a parameter set or an access unit
delimiter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Container", "CONTAINERS", "SNIFF_BYTES", "sniff_container"]

SNIFF_BYTES = 1024  # enough for every signature below (three MPEG-TS packets: 564; M2TS: 580)

# Leading atoms of QuickTime files written before ``ftyp`` was required.
_QT_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_ASF_GUID = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")
_MXF_KEY = bytes.fromhex("060E2B34020501010D010201")


@dataclass(frozen=True)
class Container:
    name: str
    matches: Callable[[bytes], bool]  # head of the file (up to SNIFF_BYTES) -> is this container


def _sync_every(head: bytes, offset: int, stride: int, packets: int = 3) -> bool:
    """MPEG transport stream: the sync byte 0x47 at ``offset`` of each of the first packets (at least two)."""
    n = min(packets, (len(head) - offset - 1) // stride + 1) if len(head) > offset else 0
    return n >= 2 and all(head[offset + i * stride] == 0x47 for i in range(n))


def _annex_b(head: bytes) -> bool:
    """An H.264/H.265 elementary stream: a start code then a parameter set or an access unit delimiter."""
    for code in (b"\x00\x00\x00\x01", b"\x00\x00\x01"):
        if head.startswith(code) and len(head) > len(code):
            nal = head[len(code)]
            h264 = nal & 0x1F  # ITU-T H.264 7.3.1: forbidden bit, nal_ref_idc, nal_unit_type
            h265 = (nal >> 1) & 0x3F  # ITU-T H.265 7.3.1.2: forbidden bit, nal_unit_type
            return (nal & 0x80) == 0 and (h264 in (7, 9) or h265 in (32, 33, 34, 35))
    return False


CONTAINERS: tuple[Container, ...] = (
    Container("mp4/mov/3gp (ISO BMFF)", lambda h: h[4:8] == b"ftyp"),
    Container("quicktime", lambda h: h[4:8] in _QT_ATOMS),
    Container("matroska/webm", lambda h: h.startswith(b"\x1a\x45\xdf\xa3")),
    Container("avi", lambda h: h.startswith(b"RIFF") and h[8:12] in (b"AVI ", b"AVIX", b"AVI\x19")),
    Container("mpeg-ts", lambda h: _sync_every(h, 0, 188)),
    Container("m2ts (bdav)", lambda h: _sync_every(h, 4, 192)),
    Container("mpeg-ps", lambda h: h.startswith(b"\x00\x00\x01\xba")),
    Container("mpeg video", lambda h: h.startswith(b"\x00\x00\x01\xb3")),
    Container("flv", lambda h: h.startswith(b"FLV\x01")),
    Container("asf/wmv", lambda h: h.startswith(_ASF_GUID)),
    Container("ogg", lambda h: h.startswith(b"OggS")),
    Container("ivf", lambda h: h.startswith(b"DKIF")),
    Container("realmedia", lambda h: h.startswith(b".RMF")),
    Container("mxf", lambda h: h.startswith(_MXF_KEY)),
    Container("yuv4mpeg", lambda h: h.startswith(b"YUV4MPEG2 ")),
    Container("nut", lambda h: h.startswith(b"nut/multimedia container")),
    Container("h264/h265 elementary stream", _annex_b),
)


def sniff_container(head: bytes) -> str | None:
    """The container ``head`` (a file's first bytes) starts like, or None when no video container does.

    Args:
        head: the first :data:`SNIFF_BYTES` bytes of the file (fewer for a shorter file).
    """
    head = bytes(head[:SNIFF_BYTES])
    for c in CONTAINERS:
        if len(head) >= 4 and c.matches(head):
            return c.name
    return None
