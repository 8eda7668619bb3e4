import json
import sys

from fedtier.client.context import TaskContext
from shift import validate

if __name__ == "__main__":
    with open(sys.argv[2], "w") as f:
        json.dump(validate(sys.argv[1], TaskContext.from_env()), f)
