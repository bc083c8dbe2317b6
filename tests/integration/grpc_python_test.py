"""A client in another language: Python grpcio against the real spanserve-server.

Checks health, lists services by reflection, builds the spanserve.v1 message classes from
the descriptors reflection serves (no generated stubs, no .proto needed), then calls
Generate and Score. Run by CTest through run_python_test.sh.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

ARGS = None
SERVICE = "spanserve.v1.SpanServe"


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(cls.tmp.name, "port")
        cls.log = open(os.path.join(cls.tmp.name, "log"), "w+")
        cls.proc = subprocess.Popen(
            [ARGS.server, f"--model={ARGS.model}", "--listen=127.0.0.1:0",
             f"--port_file={port_file}", "--threads=1", "--kv_cache_bytes=67108864"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if cls.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("spanserve-server did not start")
            time.sleep(0.01)
        with open(port_file) as f:
            cls.address = f"127.0.0.1:{int(f.read())}"
        cls.channel = grpc.insecure_channel(cls.address)
        health = health_pb2_grpc.HealthStub(cls.channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.time() > deadline:
                raise RuntimeError("spanserve-server never became SERVING")
            time.sleep(0.02)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=60)
        cls.log.close()
        cls.tmp.cleanup()
        assert code == 0, f"spanserve-server exited {code}"

    def message(self, name):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(name))

    def setUp(self):
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def test_health(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", SERVICE):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING)

    def test_reflection_lists_services(self):
        services = set(self.db.get_services())
        self.assertIn(SERVICE, services)
        self.assertIn("grpc.health.v1.Health", services)
        methods = {m.name for m in self.pool.FindServiceByName(SERVICE).methods}
        self.assertTrue({"Generate", "Score", "Tokenize", "Detokenize", "GetModelInfo",
                         "GetExpertLoad", "Abort"} <= methods)

    def test_generate(self):
        request_cls = self.message("spanserve.v1.GenerateRequest")
        chunk_cls = self.message("spanserve.v1.GenerateChunk")
        generate = self.channel.unary_stream(
            f"/{SERVICE}/Generate", request_serializer=request_cls.SerializeToString,
            response_deserializer=chunk_cls.FromString)
        request = request_cls()
        request.prompt.text = "And God said"
        request.sampling.temperature = 0.0
        request.sampling.max_tokens = 12
        request.sampling.ignore_eos = True
        chunks = list(generate(request, timeout=60))
        ids = [i for c in chunks for i in c.token_ids]
        self.assertEqual(len(ids), 12)
        self.assertTrue(chunks[-1].HasField("final"))
        self.assertEqual(chunks[-1].final.generated_tokens, 12)
        self.assertGreater(len("".join(c.text for c in chunks)), 0)
        # Bad sampling values are INVALID_ARGUMENT naming the field.
        request.sampling.top_p = 2.0
        with self.assertRaises(grpc.RpcError) as caught:
            list(generate(request, timeout=60))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("top_p", caught.exception.details())

    def test_score(self):
        request_cls = self.message("spanserve.v1.ScoreRequest")
        response_cls = self.message("spanserve.v1.ScoreResponse")
        score = self.channel.unary_unary(
            f"/{SERVICE}/Score", request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString)
        request = request_cls()
        request.context.text = "In the beginning God created the heaven"
        request.continuations.add().text = " and the earth"
        request.continuations.add().text = " zebra quantum"
        response = score(request, timeout=60)
        self.assertEqual(len(response.scores), 2)
        for s in response.scores:
            self.assertLess(s.logprob, 0.0)
            self.assertEqual(len(s.token_logprobs), s.num_tokens)
        self.assertGreater(response.scores[0].logprob, response.scores[1].logprob)

    def test_oversized_metadata_fails_alone_on_the_connection(self):
        # grpcio (a newer gRPC core than the server's 1.51) sends metadata past the limit
        # the server advertises; gRPC 1.51 ended every call on the connection for it.
        request_cls = self.message("spanserve.v1.GenerateRequest")
        chunk_cls = self.message("spanserve.v1.GenerateChunk")
        generate = self.channel.unary_stream(
            f"/{SERVICE}/Generate", request_serializer=request_cls.SerializeToString,
            response_deserializer=chunk_cls.FromString)
        long_request = request_cls()
        long_request.prompt.text = "And God said"
        long_request.sampling.temperature = 0.0
        long_request.sampling.max_tokens = 96
        long_request.sampling.ignore_eos = True
        bystander = generate(long_request, timeout=120)
        first = next(bystander)  # streaming on the shared connection
        short = request_cls()
        short.prompt.text = "And God said"
        short.sampling.max_tokens = 2
        for size in (9000, 64 << 10, 1 << 20):
            with self.assertRaises(grpc.RpcError) as caught:
                list(generate(short, timeout=60, metadata=[("x-big", "a" * size)]))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, size)
            self.assertIn("--max_metadata_bytes", caught.exception.details())
        rest = list(bystander)
        self.assertEqual(sum(len(c.token_ids) for c in [first] + rest), 96)
        self.assertTrue(rest[-1].HasField("final"))
        # And the connection still carries new calls.
        self.assertEqual(sum(len(c.token_ids) for c in generate(short, timeout=60)), 2)

    def test_invalid_utf8_is_invalid_argument(self):
        # A client that sends bytes the proto3 parser refuses (a string that is not UTF-8).
        tokenize = self.channel.unary_unary(f"/{SERVICE}/Tokenize",
                                            request_serializer=lambda b: b,
                                            response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as caught:
            tokenize(b"\x0a\x03ab\xff", timeout=30)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("text", caught.exception.details())
        self.assertIn("UTF-8", caught.exception.details())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
