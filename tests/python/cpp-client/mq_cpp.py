"""mqtrace's test application over Apache's C++ RocketMQ client (PyPI `rocketmq` 0.4.4: ctypes
over the librocketmq.so it bundles; the bytes on the wire are the C++ client's).

    python mq_cpp.py produce --namesrv H:P --topic T --group G --count N
    python mq_cpp.py consume --namesrv H:P --topic T --group G --expect N [--fail-first K]
                             [--timeout-s S] [--linger-ms MS]

Output contract (as the Java, Go and Node applications): one JSON line per message on stdout, a
consumer's {"ready": true} once started, {"done": true} last; errors on stderr, exit 1, nothing
on stdout after a fatal error.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

# The C++ client logs under $HOME/logs/rocketmq-cpp: a scratch home, removed at exit.
SCRATCH_HOME = tempfile.mkdtemp(prefix="mq-cpp-")
os.environ["HOME"] = SCRATCH_HOME

from rocketmq.client import Message, Producer, PushConsumer, RecvMessage, SendStatus  # noqa: E402
from rocketmq.exceptions import ffi_check  # noqa: E402
from rocketmq.ffi import _CConsumeStatus, dll  # noqa: E402

LOCK = threading.Lock()
QUIET = threading.Event()  # set after the done line or a fatal error: nothing more on stdout


def emit(line):
    with LOCK:
        if not QUIET.is_set():
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def fatal(message):
    QUIET.set()
    sys.stderr.write("mq-cpp: error: %s\n" % message)
    shutil.rmtree(SCRATCH_HOME, ignore_errors=True)
    os._exit(1)


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def produce(args):
    producer = Producer(args.group)
    producer.set_namesrv_addr(args.namesrv)
    producer.start()
    for i in range(args.count):
        message = Message(args.topic)
        message.set_tags("TagA")
        message.set_keys("key-%d" % i)
        message.set_body("mqtrace C++ client message %d" % i)
        result = producer.send_sync(message)
        if result.status != SendStatus.OK:
            fatal("send %d: %s" % (i, result.status.name))
        emit({"msgId": result.msg_id, "topic": args.topic, "queueOffset": result.offset,
              "status": "SEND_OK", "tag": "TagA", "keys": "key-%d" % i})
    producer.shutdown()
    emit({"done": True})


def consume(args):
    deliveries = {}
    succeeded = set()
    finished = threading.Event()

    def on_message(_consumer, handle):
        try:
            return deliver(RecvMessage(handle))
        except Exception as e:  # noqa: BLE001 - a C callback cannot raise: end the run
            fatal("consuming: %r" % e)

    def deliver(message):
        message_id = text(message.get_property("UNIQ_KEY")) or text(message.id)
        with LOCK:
            n = deliveries[message_id] = deliveries.get(message_id, 0) + 1
        fail = n <= args.fail_first
        emit({"msgId": text(message_id), "topic": text(message.topic),
              "reconsumeTimes": message.reconsume_times,
              "queueId": message.queue_id, "queueOffset": message.queue_offset,
              "tag": text(message.tags), "keys": text(message.keys),
              "result": "RECONSUME_LATER" if fail else "CONSUME_SUCCESS"})
        if fail:
            return _CConsumeStatus.RECONSUME_LATER.value
        with LOCK:
            succeeded.add(message_id)
            if len(succeeded) >= args.expect:
                finished.set()
        return _CConsumeStatus.CONSUME_SUCCESS.value

    consumer = PushConsumer(args.group)
    consumer.set_namesrv_addr(args.namesrv)
    consumer.set_message_batch_max_size(1)
    # The package's subscribe() turns an exception into RECONSUME_LATER and then re-raises it
    # inside the C callback; the callback here returns the status itself.
    ffi_check(dll.Subscribe(consumer._handle, args.topic.encode(), b"*"))
    consumer._register_callback(on_message)
    consumer.start()
    emit({"ready": True})
    if not finished.wait(args.timeout_s):
        fatal("timeout after %ds: %d of %d consumed" % (args.timeout_s, len(succeeded), args.expect))
    emit({"done": True})
    QUIET.set()
    time.sleep(args.linger_ms / 1000.0)
    consumer.shutdown()  # persists the consumed offsets


def main():
    parser = argparse.ArgumentParser(description="mqtrace's C++ client test application")
    parser.add_argument("command", choices=["produce", "consume"])
    parser.add_argument("--namesrv", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--timeout-s", type=int, default=60)
    parser.add_argument("--linger-ms", type=int, default=0)
    args = parser.parse_args()
    try:
        {"produce": produce, "consume": consume}[args.command](args)
    except Exception as e:  # noqa: BLE001 - any failure ends the run with its message
        fatal(repr(e))
    shutil.rmtree(SCRATCH_HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
