"""The test suite.

gRPC's fork handlers are off before anything imports grpc: the tests start Envoy and the commands by fork and exec
(with a preexec_fn, so that they die with the test process), and with the handlers on, a fork while this process's
in-process gRPC servers were busy could break the child before its exec (seen under load: Envoy "exited" with
gRPC's "epoll_wait error: Bad file descriptor"). `ext-proc up` turns them off for the same reason (cli.main).
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
