"""The Open Inference Protocol (KServe v2): the model- and workflow-side of a call shared
by REST (rest.py) and gRPC (frontend/grpc/open_inference.py)."""
