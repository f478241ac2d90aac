#!/usr/bin/env python3
"""Writes fuzz seeds corpus/<proto>/seed_<name> from the captured fixtures (tests/fixtures/<proto>/):
each conversation encoded as driver operations (see src/driver.rs): client chunks, then server chunks."""
import glob
import os

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "tests", "fixtures")
for proto in ("http", "redis"):
    for client in sorted(glob.glob(f"{fixtures}/{proto}/*.client")):
        name = os.path.basename(client)[: -len(".client")]
        c = open(client, "rb").read()
        s = open(client[: -len(".client")] + ".server", "rb").read()[:4000]
        # 16-byte bodies, redact, client role, TCP; a compressed body keeps 512 bytes, so that
        # decoding it gets past the gzip header.
        out = bytearray([(3 if name.startswith("gzip") else 2) | 4])
        for dirbit, data in ((0, c), (8, s)):
            for i in range(0, len(data), 200):
                piece = data[i : i + 200]
                out += bytes([dirbit | (1 << 4), len(piece)]) + piece
        with open(f"{here}/corpus/{proto}/seed_{name}", "wb") as f:
            f.write(out)
