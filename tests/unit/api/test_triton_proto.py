"""Our proto/inference messages against Triton's own (tritonclient's generated modules): every field we
declare has Triton's number, type and name, so its clients read what we send and we read what they send."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from service._generated.inference import grpc_service_pb2 as ours_service
from service._generated.inference import model_config_pb2 as ours_config


def _pairs() -> list[tuple[Descriptor, Descriptor]]:
    pairs = []
    for ours_module, theirs_module in ((ours_config, triton_config), (ours_service, triton_service)):
        for name, descriptor in ours_module.DESCRIPTOR.message_types_by_name.items():
            theirs = theirs_module.DESCRIPTOR.message_types_by_name.get(name)
            assert theirs is not None, f"Triton has no message {name}"
            pairs.append((descriptor, theirs))
    return pairs


def _compare(ours: Descriptor, theirs: Descriptor) -> None:
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{ours.full_name}.{field.name}: not a field of Triton's"
        assert (field.number, field.type) == (other.number, other.type), f"{ours.full_name}.{field.name}"
        assert field.is_repeated == other.is_repeated, f"{ours.full_name}.{field.name}"
        if field.message_type is not None:
            assert field.message_type.name == other.message_type.name
            if not field.message_type.GetOptions().map_entry:
                _compare(field.message_type, other.message_type)
    for nested in ours.enum_types:
        _compare_enum(nested, theirs.enum_types_by_name[nested.name])


def _compare_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    theirs_values = {v.name: v.number for v in theirs.values}
    assert {v.name: v.number for v in ours.values}.items() <= theirs_values.items()


@pytest.mark.parametrize("ours, theirs", _pairs(), ids=lambda d: d.name)
def test_messages_match_triton(ours: Descriptor, theirs: Descriptor) -> None:
    _compare(ours, theirs)


def test_data_types_match_triton() -> None:
    _compare_enum(ours_config.DataType.DESCRIPTOR, triton_config.DataType.DESCRIPTOR)


def test_service_methods_are_tritons() -> None:
    ours = ours_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            other.input_type.name,
            other.output_type.name,
        )
