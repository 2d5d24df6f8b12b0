"""A shop's back office: customers, products with stock, orders, refunds.

Business rules answer as a real order API would: an order that has shipped cannot be cancelled,
a refund is only for a delivered order and never more than what is left to refund, an order
cannot take more than the stock. Amounts are in euros with two decimals.
"""

from __future__ import annotations

from typing import Any

from bench.packs.agent.environment import Environment, ToolError, tool

ORDER_ID = {"type": "string", "pattern": "^O-[0-9]+$", "description": "Order id such as O-1042"}
CUSTOMER_ID = {"type": "string", "pattern": "^C-[0-9]+$", "description": "Customer id such as C-101"}


def _money(value: float) -> float:
    return round(value + 1e-9, 2)


class Shop(Environment):
    name = "shop"
    summary = "an online shop's order system (customers, products, orders and refunds)"

    def _table(self, name: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = self.state.setdefault(name, {})
        return table

    def _order(self, order_id: str) -> dict[str, Any]:
        order = self._table("orders").get(order_id)
        if order is None:
            raise ToolError("not_found", f"no order {order_id}")
        return order

    def _refunded(self, order_id: str) -> float:
        return _money(sum(r["amount"] for r in self._table("refunds").values() if r["order_id"] == order_id))

    @tool("Find customers whose name or email contains a text.", {"query": {"type": "string", "minLength": 2}}, required=["query"])
    def find_customers(self, query: str) -> dict[str, Any]:
        needle = query.casefold()
        found = [
            {"id": cid, "name": c["name"], "email": c["email"]}
            for cid, c in sorted(self._table("customers").items())
            if needle in c["name"].casefold() or needle in c["email"].casefold()
        ]
        return {"customers": found}

    @tool("List a customer's orders, newest first, optionally only those with one status.",
          {"customer_id": CUSTOMER_ID,
           "status": {"type": "string", "enum": ["placed", "shipped", "delivered", "cancelled"]}},
          required=["customer_id"])
    def list_orders(self, customer_id: str, status: str | None = None) -> dict[str, Any]:
        if customer_id not in self._table("customers"):
            raise ToolError("not_found", f"no customer {customer_id}")
        orders = [
            {"id": oid, "date": o["date"], "status": o["status"], "total": o["total"], "items": len(o["items"])}
            for oid, o in self._table("orders").items()
            if o["customer_id"] == customer_id and (status is None or o["status"] == status)
        ]
        return {"orders": sorted(orders, key=lambda o: (o["date"], o["id"]), reverse=True)}

    @tool("Get one order with its lines, address, tracking and refunds.", {"order_id": ORDER_ID}, required=["order_id"])
    def get_order(self, order_id: str) -> dict[str, Any]:
        order = self._order(order_id)
        refunds = [{"id": rid, **r} for rid, r in sorted(self._table("refunds").items()) if r["order_id"] == order_id]
        refundable = _money(order["total"] - self._refunded(order_id)) if order["status"] == "delivered" else 0.0
        return {"id": order_id, **order, "refunds": refunds, "refundable": refundable}

    @tool("Search the product catalogue by name.", {"query": {"type": "string", "minLength": 2}}, required=["query"])
    def search_products(self, query: str) -> dict[str, Any]:
        words = query.casefold().split()
        found = [
            {"sku": sku, "name": p["name"], "price": p["price"], "stock": p["stock"]}
            for sku, p in sorted(self._table("products").items())
            if all(word in p["name"].casefold() for word in words)
        ]
        return {"products": found}

    @tool(
        "Place a new order for a customer. Each line is a product SKU and a quantity.",
        {"customer_id": CUSTOMER_ID,
         "lines": {"type": "array", "minItems": 1, "items": {
             "type": "object", "additionalProperties": False, "required": ["sku", "quantity"],
             "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "maximum": 20}}}}},
        required=["customer_id", "lines"],
    )
    def place_order(self, customer_id: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        customer = self._table("customers").get(customer_id)
        if customer is None:
            raise ToolError("not_found", f"no customer {customer_id}")
        products = self._table("products")
        items = []
        for line in lines:
            product = products.get(line["sku"])
            if product is None:
                raise ToolError("not_found", f"no product with SKU {line['sku']}")
            if product["stock"] < line["quantity"]:
                raise ToolError("conflict", f"only {product['stock']} of {line['sku']} in stock")
            items.append({"sku": line["sku"], "name": product["name"], "quantity": line["quantity"], "price": product["price"]})
        for line in lines:
            products[line["sku"]]["stock"] -= line["quantity"]
        order_id = self.next_id("order", "O-")
        total = _money(sum(i["price"] * i["quantity"] for i in items))
        self._table("orders")[order_id] = {
            "customer_id": customer_id, "date": self.state.get("today", ""), "status": "placed", "items": items,
            "total": total, "address": customer["address"], "tracking": None,
        }  # fmt: skip
        return {"order_id": order_id, "status": "placed", "total": total}

    @tool("Cancel an order that has not shipped yet; its stock goes back.",
          {"order_id": ORDER_ID, "reason": {"type": "string", "minLength": 3}}, required=["order_id", "reason"])
    def cancel_order(self, order_id: str, reason: str) -> dict[str, Any]:
        order = self._order(order_id)
        if order["status"] != "placed":
            raise ToolError("conflict", f"order {order_id} is {order['status']}; only placed orders can be cancelled")
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        for item in order["items"]:
            product = self._table("products").get(item["sku"])
            if product is not None:
                product["stock"] += item["quantity"]
        return {"order_id": order_id, "status": "cancelled"}

    @tool(
        "Refund money on a delivered order (part or all of what is left to refund).",
        {"order_id": ORDER_ID, "amount": {"type": "number", "exclusiveMinimum": 0},
         "reason": {"type": "string", "minLength": 3}},
        required=["order_id", "amount", "reason"],
    )
    def refund_order(self, order_id: str, amount: float, reason: str) -> dict[str, Any]:
        order = self._order(order_id)
        if order["status"] != "delivered":
            raise ToolError("conflict", f"order {order_id} is {order['status']}; only delivered orders can be refunded")
        left = _money(order["total"] - self._refunded(order_id))
        if _money(amount) > left:
            raise ToolError("validation_error", f"amount {amount} is more than the {left} left to refund on {order_id}")
        refund_id = self.next_id("refund", "R-")
        self._table("refunds")[refund_id] = {"order_id": order_id, "amount": _money(amount), "reason": reason}
        return {"refund_id": refund_id, "order_id": order_id, "amount": _money(amount), "left_to_refund": _money(left - amount)}

    @tool("Change the delivery address of an order that has not shipped yet.",
          {"order_id": ORDER_ID, "address": {"type": "string", "minLength": 5}}, required=["order_id", "address"])
    def update_address(self, order_id: str, address: str) -> dict[str, Any]:
        order = self._order(order_id)
        if order["status"] != "placed":
            raise ToolError("conflict", f"order {order_id} is {order['status']}; the address can only change before shipping")
        order["address"] = address
        return {"order_id": order_id, "address": address}
