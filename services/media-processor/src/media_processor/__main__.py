from chat_core.server import serve
from media_processor.app import COMPONENT, create_app

if __name__ == "__main__":
    serve(create_app, component=COMPONENT)
