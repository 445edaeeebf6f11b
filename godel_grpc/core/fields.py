"""Copies same-named fields between messages of different types.

Several requests carry a task's fields at their top level (SubmitTaskRequest, and the
swarm, queue and partition submits), so they are turned into a Task by field name.
"""

from __future__ import annotations

from google.protobuf.message import Message


def copy_common_fields(source: Message, target: Message) -> None:
    """Copies every set field of `source` that `target` has under the same name."""
    target_fields = target.DESCRIPTOR.fields_by_name
    for field, value in source.ListFields():
        if field.name not in target_fields:
            continue
        if field.is_repeated:
            destination = getattr(target, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                destination.update(value)
            else:
                destination.extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
