from omnittt.cli import main

main()
