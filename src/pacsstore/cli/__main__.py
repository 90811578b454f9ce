from pacsstore.cli import main

main()
