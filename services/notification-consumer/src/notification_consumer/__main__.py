from chat_core.server import serve
from notification_consumer.app import COMPONENT, create_app

if __name__ == "__main__":
    serve(create_app, component=COMPONENT)
