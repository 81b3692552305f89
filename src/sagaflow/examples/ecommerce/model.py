"""The order as both styles see it."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["OrderRequest"]


class OrderRequest(BaseModel):
    """What the customer asked for."""

    order_id: str
    sku: str = "book"
    quantity: int = 1
    amount_cents: int = 2_500
    address: str = "1 Main Street"
