"""Tell the data team about a night: every pipeline run ends with a Prefect event, and an
automation turns refused or failed runs into a webhook call.

Set up once per Prefect server (a CustomWebhookNotificationBlock plus an automation):
    tunegate notify https://chat.example.com/hooks/abc --on refused --on failed
"""

from __future__ import annotations

import contextlib

from prefect.automations import Automation, EventTrigger, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.context import FlowRunContext
from prefect.events import emit_event

EVENT = "tunegate.run.{status}"  # status: promoted | refused | failed
BLOCK_NAME = "tunegate-nightly"

# Jinja, rendered by the server's automation with the event that triggered it.
SUBJECT = "tunegate {{ event.payload.pipeline }}: {{ event.payload.status }}"
BODY = (
    "{{ event.payload.pipeline }} run {{ event.payload.run_id }} {{ event.payload.status }}: "
    "{{ event.payload.detail }}\nlineage: {{ event.payload.lineage }}"
)


def announce_run(run_id: str, status: str, detail: str | None, pipeline: str, lineage: str) -> None:
    """Emit `tunegate.run.<status>` for a finished run (a no-op outside a Prefect flow run:
    emitting would start a temporary server just to drop the event)."""
    if FlowRunContext.get() is None:
        return
    emit_event(
        event=EVENT.format(status=status),
        resource={
            "prefect.resource.id": f"tunegate.run.{run_id}",
            "prefect.resource.name": pipeline,
        },
        payload={
            "run_id": run_id,
            "status": status,
            "detail": detail or "",
            "pipeline": pipeline,
            "lineage": lineage,
        },
    )


def setup_notifications(
    webhook_url: str, statuses: list[str], allow_private_urls: bool = False
) -> tuple[str, str]:
    """Save the webhook block and the automation that calls it; returns their ids.

    The webhook receives JSON `{"subject": ..., "text": ...}`. Running it again replaces
    the block and adds no second automation of the same name.
    """
    block = CustomWebhookNotificationBlock(
        name="tunegate",  # the sender's name, `{{name}}` in the block's templates
        url=webhook_url,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=allow_private_urls,
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    name = f"{BLOCK_NAME}: {', '.join(statuses)}"
    with contextlib.suppress(ValueError):  # ValueError: none yet
        Automation.read(name=name).delete()
    automation = Automation(
        name=name,
        description="A tunegate night ended " + " or ".join(statuses) + ": call the webhook.",
        trigger=EventTrigger(
            expect={EVENT.format(status=s) for s in statuses},
            match={"prefect.resource.id": "tunegate.run.*"},
            posture="Reactive",
            threshold=1,
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()
    return str(block_id), str(automation.id)
