"""Generated from proto/ by service.protogen; do not edit.

Import as `from service._generated.effnet.v1 import classifier_pb2`."""

from google.protobuf import descriptor_pool as _descriptor_pool

# Our descriptors live in this pool, not the process-wide default one: see protogen.py.
POOL = _descriptor_pool.DescriptorPool()
