from chat_core.server import serve
from image_proxy.app import COMPONENT, create_app

if __name__ == "__main__":
    serve(create_app, component=COMPONENT)
