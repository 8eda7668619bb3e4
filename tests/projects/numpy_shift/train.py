"""The same project as FEDn-style commands: python train.py IN OUT."""
import json
import sys

from fedtier.client.context import TaskContext
from shift import train

if __name__ == "__main__":
    metadata = train(sys.argv[1], sys.argv[2], TaskContext.from_env())
    with open(sys.argv[2] + "-metadata", "w") as f:
        json.dump(metadata, f)
