#!/usr/bin/env python3
"""Extracts the golden byte streams of tests/golden_streams.rs from the kernel 8.4.11 captures.

usage: python3 extract.py [CAPTURES_DIR]   (default /work/shared/reference/captures)

Each output file is a run of whole packets, exactly as one TCP direction carried them, cut at
packet boundaries: NAME.bin. Streams whose first packet is P_INITIAL_* start with h80 headers.
"""
import os, sys
from collections import OrderedDict

CAP = sys.argv[1] if len(sys.argv) > 1 else '/work/shared/reference/captures'
sys.path.insert(0, CAP)
import drbddecode as d

PORTS = {17101: 'A', 17102: 'B'}

# (pcap, connection index, direction 'client'|'server', first packet (index, negative from the
#  end, or 'P_DATA' = the first P_DATA), packet count or None for all, name)
WANT = [
    ('s1-connect-sync-writes-resync.pcap.gz', 2, 'client', 0, 60, 's1-c2-meta-AtoB'),
    ('s1-connect-sync-writes-resync.pcap.gz', 2, 'server', 0, 200, 's1-c2-meta-BtoA'),
    ('s1-connect-sync-writes-resync.pcap.gz', 3, 'client', 0, None, 's1-c3-data-BtoA'),
    ('s1-connect-sync-writes-resync.pcap.gz', 3, 'server', 0, 14, 's1-c3-data-AtoB-head'),
    ('s1-connect-sync-writes-resync.pcap.gz', 3, 'server', 'P_DATA', 6, 's1-c3-data-AtoB-writes'),
    ('s1-connect-sync-writes-resync.pcap.gz', 3, 'server', -8, None, 's1-c3-data-AtoB-tail'),
    ('s1-connect-sync-writes-resync.pcap.gz', 6, 'client', 0, None, 's1-c6-data-AtoB'),
    ('s1-connect-sync-writes-resync.pcap.gz', 6, 'server', 0, None, 's1-c6-data-BtoA'),
    ('s1-connect-sync-writes-resync.pcap.gz', 7, 'client', 0, None, 's1-c7-meta-BtoA'),
    ('s1-connect-sync-writes-resync.pcap.gz', 7, 'server', 0, None, 's1-c7-meta-AtoB'),
    ('s1-connect-sync-writes-resync.pcap.gz', 10, 'client', 0, None, 's1-c10-data-AtoB'),
    ('s1-connect-sync-writes-resync.pcap.gz', 10, 'server', 0, None, 's1-c10-data-BtoA'),
    ('s2-cram-hmac-sha256.pcap', 1, 'client', 0, None, 's2-c1-data-AtoB'),
    ('s2-cram-hmac-sha256.pcap', 1, 'server', 0, None, 's2-c1-data-BtoA'),
    ('s2-cram-hmac-sha256.pcap', 2, 'client', 0, None, 's2-c2-meta-BtoA'),
    ('s3-verify-integrity-csums-statechg.pcap', 1, 'client', 0, 150, 's3-c1-data-AtoB'),
    ('s3-verify-integrity-csums-statechg.pcap', 1, 'server', 0, 150, 's3-c1-data-BtoA'),
    ('s3-verify-integrity-csums-statechg.pcap', 2, 'server', 0, 150, 's3-c2-meta-AtoB'),
    ('s3-verify-integrity-csums-statechg.pcap', 5, 'client', 0, None, 's3-c5-data-AtoB'),
    ('s3-verify-integrity-csums-statechg.pcap', 5, 'server', 0, None, 's3-c5-data-BtoA'),
]


def connections(path):
    flows = {}
    for t, key, seq, fl, pl in d.tcp_segments(path):
        flows.setdefault(key, d.Flow(key)).add(t, seq, fl, pl)
    conns, seen = [], set()
    for key, f in flows.items():
        src, sp, dst, dp = key
        if dp in PORTS and key not in seen:
            rev = (dst, dp, src, sp)
            seen.add(key); seen.add(rev)
            ts = f.syn_t or (min(t for t, _ in f.segs.values()) if f.segs else 0)
            conns.append((ts or 0, f, flows.get(rev)))
    conns.sort(key=lambda c: c[0])
    return conns


def main():
    cache = {}
    for pcap, idx, side, first, count, name in WANT:
        if pcap not in cache:
            cache[pcap] = connections(os.path.join(CAP, pcap))
        _, client, server = cache[pcap][idx]
        buf = (client if side == 'client' else server).stream()[0]
        packets = list(d.split_packets(buf))
        if first == 'P_DATA':
            first = next(i for i, p in enumerate(packets) if p[4] == 0)
        if first < 0:
            first += len(packets)
        chosen = packets[first:first + count] if count else packets[first:]
        start = chosen[0][0]
        last = chosen[-1]
        end = last[0] + last[2] + last[5]
        data = buf[start:end]
        with open(name + '.bin', 'wb') as f:
            f.write(data)
        print('%-28s %3d packets %7d bytes (stream packets %d..%d of %d)' % (
            name, len(chosen), len(data), first, first + len(chosen) - 1, len(packets)))


if __name__ == '__main__':
    main()
