"""Reading offline W&B runs back: the run file's records, once W&B has written them."""

import struct


def read_records(path):
    """W&B's run file: a 7-byte header, then leveldb-log style chunks (crc, length, type) of protobuf
    Records in 32 KiB blocks; types 1 (full) and 4 (last) end a record."""
    data, position, pending = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        position += 7
        if length == 0 and kind == 0:
            break
        pending += data[position : position + length]
        position += length
        if kind in (1, 4):
            from wandb.proto import wandb_internal_pb2

            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def written_runs(folder, pattern="offline-run-*"):
    """The offline runs under ``folder`` once W&B has written them out: ``finish()`` returns before its
    service has flushed every record (seen under load), ``wandb.teardown()`` waits for that."""
    import wandb

    wandb.teardown()
    return sorted(folder.glob(pattern))
