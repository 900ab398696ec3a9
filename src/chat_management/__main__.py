from chat_management.cli import main

main()
