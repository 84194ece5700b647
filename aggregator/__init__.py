"""Cross-blog aggregator and digest mailer."""

__version__ = "0.1.0"
PRODUCT_NAME = "aggregator"
PRODUCT_URL = "https://github.com/learning-layers/aggregator"
USER_AGENT = f"{PRODUCT_NAME}/{__version__} (+{PRODUCT_URL})"
