"""The reducer's handle on one combiner: push and fetch models, run rounds, read status."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import grpc

from fedtier import limits
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.transport.channel import make_channel
from fedtier.transport.streams import Inspector, Received, file_chunks, receive_to_file
from fedtier.transport.wire import ModelTransferStub


class CombinerClient:
    def __init__(self, address: str, token: str | Callable[[], str] = "", ca_file: str | None = None) -> None:
        self.address = address
        self.channel = make_channel(address, token=token, ca_file=ca_file)
        self.control = rpc.ControlStub(self.channel)
        self.transfer = ModelTransferStub(self.channel)

    def upload_model(self, path: Path, model_id: str, timeout: float | None = None,
                     sha256: str | None = None, xxh3: str | None = None) -> pb.UploadResponse:
        """Push a model unless the combiner already has it (ids name immutable bytes).
        ``sha256`` is the model's content hash, sent for the combiner to keep (the trail's);
        ``xxh3`` its checksum as recorded when it arrived, sent as it is (else computed on
        the way), so a file damaged since is refused."""
        try:
            return self.transfer.UploadModel(file_chunks(path, model_id=model_id, client_name="reducer",
                                                         sha256=sha256, xxh3=xxh3), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "already exists" in (exc.details() or ""):
                return pb.UploadResponse(model_id=model_id)
            raise

    def adopt_model(self, path: Path, model_id: str, sha256: str, timeout: float | None = None) -> bool:
        """Ask the combiner to hold, under ``model_id``, bytes it already has with this sha256
        and ``path``'s size (its own aggregate, with one combiner). True: nothing to upload."""
        request = pb.AdoptRequest(model_id=model_id, sha256=sha256, size=path.stat().st_size)
        try:
            return self.control.AdoptModel(request, timeout=timeout).ok
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a combiner from before AdoptModel
                return False
            raise

    def download_model(self, model_id: str, dest: Path, timeout: float | None = None,
                       durable: bool = False,
                       inspect: Callable[[pb.TransferHeader], Inspector | None] | None = None) -> Received:
        """Fetch a model into ``dest``, its checksum verified. ``durable`` when ``dest`` will be committed to
        the store as it is (linked, then fsynced there): its disk writes start during the
        transfer instead of all waiting for the commit. ``inspect`` sees the bytes on the way
        (receive_to_file): the reducer checks a combiner model there, as it arrives."""
        stream = self.transfer.DownloadModel(pb.DownloadRequest(model_id=model_id, client_name="reducer"),
                                             timeout=timeout)
        return receive_to_file(stream, lambda header: dest, durable=durable, inspect=inspect,
                               max_size=limits.current().model_bytes)

    def start_round(self, request: pb.RoundRequest, timeout: float | None = None) -> pb.RoundResult:
        return self.control.StartRound(request, timeout=timeout)

    def status(self, timeout: float = 5.0) -> pb.CombinerStatus:
        return self.control.Status(pb.StatusRequest(), timeout=timeout)

    def stop(self, round_id: str = "", timeout: float = 5.0) -> pb.Ack:
        return self.control.Stop(pb.StopRequest(round_id=round_id), timeout=timeout)

    def configure(self, reducer_url: str, config_json: str = "{}", timeout: float = 5.0) -> pb.Ack:
        return self.control.Configure(pb.ConfigureRequest(reducer_url=reducer_url, config_json=config_json),
                                      timeout=timeout)

    def close(self) -> None:
        self.channel.close()
