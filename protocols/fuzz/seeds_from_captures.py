#!/usr/bin/env python3
"""Writes fuzz seeds corpus/<proto>/seed_<case> for the DNS, PostgreSQL and MySQL captures
(tests/fixtures/<proto>/<case>/{client.bin,server.bin,chunks.txt}), each conversation encoded as
driver operations (see src/driver.rs) in captured order, chunks cut at 255 bytes."""
import glob
import os

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "tests", "fixtures")
for proto in ("dns", "pgsql", "mysql"):
    os.makedirs(f"{here}/corpus/{proto}", exist_ok=True)
    for case in sorted(glob.glob(f"{fixtures}/{proto}/*/chunks.txt")):
        case_dir = os.path.dirname(case)
        name = os.path.basename(case_dir)
        streams = {s: open(f"{case_dir}/{f}", "rb").read() for s, f in (("c", "client.bin"), ("s", "server.bin"))}
        offsets = {"c": 0, "s": 0}
        udp = name.startswith("udp")
        out = bytearray([3 | 4 | (16 if udp else 0)])  # 512-byte bodies, redact, client role
        for line in open(case):
            side, _ts, length = line.split()
            length = int(length)
            data = streams[side][offsets[side] : offsets[side] + length]
            offsets[side] += length
            for i in range(0, len(data), 255):
                piece = data[i : i + 255]
                out += bytes([(8 if side == "s" else 0) | (1 << 4), len(piece)]) + piece
        with open(f"{here}/corpus/{proto}/seed_{name}", "wb") as f:
            f.write(out)
