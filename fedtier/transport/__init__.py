"""gRPC plumbing shared by combiner, client and reducer: channels and model streams."""
from fedtier.transport.channel import make_channel, make_server
from fedtier.transport.streams import CHUNK_SIZE, TransferError, file_chunks, receive_to_file

__all__ = ["CHUNK_SIZE", "TransferError", "file_chunks", "make_channel", "make_server", "receive_to_file"]
