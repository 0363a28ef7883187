"""The storefront journey for Locust (PyPI), at a constant arrival rate.

Each simulated shopper signs up once, then runs one journey per second
(`constant_throughput(1)`: Locust paces the journeys, whatever the
responses take, while a journey takes under a second). N users therefore
make N journeys a second. Raise the user count, not the pace, to raise
the rate.

One journey:
1. Look at a product (Zipf-skewed, so the product cache has hot keys).
2. View it and put it in the cart (the clickstream; answered 503 without
   a broker, which is then counted as a failure).
3. Order it with an Idempotency-Key.
4. Pay.

Run it with `scripts/load-locust.sh`, which installs Locust into a venv of
its own. The Rust generator, `tributary load`, is the open-model reference:
it measures each request from its due time.
"""

import bisect
import itertools
import random
import uuid

from locust import HttpUser, constant_throughput, events, task

ZIPF_S = 1.0
_products = []
_cdf = []
_ids = itertools.count(1)


@events.test_start.add_listener
def _load_catalog(environment, **_):
    """Reads the catalog once; creates a small one if it is empty."""
    import requests

    host = environment.host.rstrip("/")
    listed = requests.get(f"{host}/products", timeout=10).json()
    if len(listed) < 20:
        for i in range(50 - len(listed)):
            requests.post(
                f"{host}/products",
                json={
                    "sku": f"LOCUST-{uuid.uuid4().hex[:12]}",
                    "name": f"locust product {i}",
                    "category": "locust",
                    "price": round(random.uniform(2, 200), 2),
                },
                timeout=10,
            ).raise_for_status()
        listed = requests.get(f"{host}/products", timeout=10).json()
    _products[:] = [p["id"] for p in listed if p.get("active")]
    weights = [1.0 / (k**ZIPF_S) for k in range(1, len(_products) + 1)]
    total = sum(weights)
    acc = 0.0
    _cdf.clear()
    for w in weights:
        acc += w / total
        _cdf.append(acc)


def _zipf_product():
    i = bisect.bisect_left(_cdf, random.random())
    return _products[min(i, len(_products) - 1)]


class Shopper(HttpUser):
    wait_time = constant_throughput(1)

    def on_start(self):
        n = next(_ids)
        r = self.client.post(
            "/customers",
            json={
                "email": f"locust-{uuid.uuid4().hex[:12]}-{n}@example.com",
                "name": f"Locust {n}",
                "region": "eu",
                "country": "DE",
                "city": "Berlin",
                "address": "Alexanderplatz 1",
                "lat": 52.52,
                "lon": 13.40,
            },
            name="POST /customers",
        )
        self.customer = r.json().get("id") if r.ok else None
        self.device = f"dev-{uuid.uuid4().hex[:8]}"

    @task
    def journey(self):
        if not self.customer or not _products:
            return
        product = _zipf_product()
        self.client.get(f"/products/{product}", name="GET /products/{id}")
        click = {"customer_id": self.customer, "device_id": self.device}
        self.client.post(f"/products/{product}/view", json=click, name="POST /products/{id}/view")
        self.client.post(f"/products/{product}/cart", json=click, name="POST /products/{id}/cart")
        r = self.client.post(
            "/orders",
            json={
                "customer_id": self.customer,
                "items": [{"product_id": product, "quantity": 1}],
                "device_id": self.device,
                "billing_country": "DE",
                "shipping_country": "DE",
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
            name="POST /orders",
        )
        if r.ok:
            order = r.json()["id"]
            self.client.post(
                f"/orders/{order}/pay",
                json={"method": "card"},
                name="POST /orders/{id}/pay",
            )
