import asyncio
import websockets
import json
import uuid

async def test_gamer():
    uri = "ws://localhost:8765"
    async with websockets.connect(uri) as websocket:
        # Register
        await websocket.send(json.dumps({
            'msg_type': 'register_gamer',
            'gamer_id': 'test_gamer_1'
        }))
        
        # Submit task
        task_id = str(uuid.uuid4())
        await websocket.send(json.dumps({
            'msg_type': 'task_request',
            'task_id': task_id,
            'task_type': 'physics',
            'data': {'objects': []}
        }))
        
        print(f"Submitted task {task_id}, waiting for result...")
        
        # Wait for result
        async for message in websocket:
            data = json.loads(message)
            if data['msg_type'] == 'task_result' and data['task_id'] == task_id:
                print(f"Received result: {data['result']}")
                break

asyncio.run(test_gamer())
